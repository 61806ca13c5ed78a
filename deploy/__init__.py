"""Deployment: deploy/local runs the embedded stack; deploy/k8s (production) manifests."""
