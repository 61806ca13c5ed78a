"""The embedded local stack: infrastructure (infra.py), the five services (stack.py)
and the demo that pushes sample cases through (demo.py)."""
