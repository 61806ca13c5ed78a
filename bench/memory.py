"""Memory over a long run: does any process grow with the number of cases?

    python -m bench.memory --cases 10000        # about an hour on 2 cores (docs/performance.md)
    python -m bench.memory --cases 500          # a quick look

Starts its own stack like `bench.run`, then drives `--cases` cases end to end
(submission over HTTP, reviewers played, partner webhook received) with at most
`--window` cases in flight, so the pipeline runs at its own sustained rate and no
backlog builds up (a backlog would grow memory for reasons that are not a leak).
Every `--every` seconds it samples each process's resident memory together with
the number of cases delivered so far, and at the end prints, per process, RSS
after each tenth of the cases and the slope of RSS against cases delivered over
the second half of the run (least squares), in KiB per 1,000 cases. Flat means
a slope near zero; a leak of even one kilobyte per case shows as about 1,000.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.load import Driver, Run, bench_case
from bench.run import machine, on_own_stack, stack_pids
from deploy.local import stack


class MemorySampler:
    """RSS of every process of the stack, with the cases delivered at that moment."""

    def __init__(
        self, pids: dict[str, int], delivered: Any, every: float, keep: Path | None = None
    ) -> None:
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._delivered = delivered
        self._every = every
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()
        self._keep = keep  # samples so far are written here, so a cut run still shows them

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        self._sample()
        while not self._stop.wait(self._every):
            self._sample()

    def _sample(self) -> None:
        rss, cpu = {}, {}
        for name, proc in self._procs.items():
            try:
                rss[name] = proc.memory_info().rss / 2**20
                times = proc.cpu_times()
                cpu[name] = times.user + times.system
            except psutil.Error:
                rss[name] = cpu[name] = float("nan")
        self.samples.append(
            {
                "t": time.monotonic() - self._t0,
                "delivered": self._delivered(),
                "rss_mib": rss,
                # Cumulative CPU seconds: if throughput falls during a run, the
                # process whose CPU per case rises is the one to look at.
                "cpu_s": cpu,
            }
        )
        if self._keep is not None:
            self._keep.write_text(json.dumps(self.samples))


def slope_kib_per_1000(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (cases, MiB) points, as KiB per 1,000 cases."""
    n = len(points)
    if n < 2:
        return float("nan")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return float("nan")
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return sxy / sxx * 1024 * 1000


async def drive(
    driver: Driver,
    run: Run,
    n: int,
    window: int,
    until: float | None = None,
    rate: float | None = None,
) -> None:
    """Submit `n` cases (or as many as fit before the monotonic time `until`), never
    more than `window` in flight and, with `rate`, case i not before start + i/rate
    (an offered load below what the stack can take: a saturated stack's latency
    grows by definition, which says nothing about whether it degrades over time);
    wait for every webhook."""
    receiver = driver.receiver
    stop = asyncio.Event()
    reviewers = asyncio.create_task(driver.play_reviewers(run, stop))
    gate = asyncio.Semaphore(1)
    run_id = time.strftime("%H%M%S") + "m"
    t0 = time.monotonic()
    try:
        for i in range(n):
            if until is not None and time.monotonic() >= until:
                break
            if rate:
                await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            # The receiver is a threaded HTTP server: poll its count, no event to await.
            while len(run.submitted) - len(receiver.arrived) >= window:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            await driver.submit_one(run, bench_case(run_id, i, *driver.patients), gate)
            if (i + 1) % 500 == 0:
                print(f"  {i + 1} submitted, {len(receiver.arrived)} delivered", flush=True)
        await driver.wait_delivered(run, within=600)
    finally:
        stop.set()
        await reviewers


def report(result: dict[str, Any]) -> str:
    samples = result["samples"]
    n = result["cases"]
    names = list(samples[0]["rss_mib"])
    lines = [
        f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
        f"{result['machine']['mem_gb']} GiB, Python {result['machine']['python']}",
        f"command: {result['command']}",
        f"{n} cases, {result['delivered']} delivered, {result['errors']} submit errors, "
        f"{result['elapsed_s']:.0f} s ({result['delivered'] / result['elapsed_s']:.2f} cases/s)",
        "",
        "RSS (MiB) after each tenth of the cases, and the slope over the second half:",
    ]
    marks = [round(n * k / 10) for k in range(1, 11)]
    at = [next((s for s in samples if s["delivered"] >= m), samples[-1]) for m in marks]
    lines.append(
        f"  {'process':14} {'start':>6} "
        + " ".join(f"{m:>6}" for m in marks)
        + f" {'KiB/1000 cases':>15}"
    )
    for name in names:
        half = [(s["delivered"], s["rss_mib"][name]) for s in samples if s["delivered"] >= n / 2]
        lines.append(
            f"  {name:14} {samples[0]['rss_mib'][name]:6.0f} "
            + " ".join(f"{s['rss_mib'][name]:6.0f}" for s in at)
            + f" {slope_kib_per_1000(half):15.0f}"
        )
    lines += ["", *cpu_per_case_lines(samples, at, names)]
    return "\n".join(lines)


def cpu_per_case_lines(
    samples: list[dict[str, Any]], at: list[dict[str, Any]], names: list[str]
) -> list[str]:
    """CPU milliseconds per delivered case over each tenth of the run, per process."""
    if "cpu_s" not in samples[0]:
        return []  # samples saved by a harness that did not record CPU
    lines = ["CPU ms per case over each tenth of the cases (a rising row is a slowing process):"]
    bounds = list(zip([samples[0], *at[:-1]], at, strict=True))
    for name in names:
        cells = []
        for a, b in bounds:
            cases = b["delivered"] - a["delivered"]
            spent = b["cpu_s"][name] - a["cpu_s"][name]
            cells.append(f"{spent / cases * 1000:6.0f}" if cases > 0 else f"{'-':>6}")
        lines.append(f"  {name:14} {'':6} " + " ".join(cells))
    return lines


async def main_async(
    args: argparse.Namespace, paths: stack.Paths, info: dict[str, Any]
) -> dict[str, Any]:
    urls, infra = info["urls"], info["infra"]
    driver = await Driver.subscribed(urls, infra, paths.root, "MRN-MEMORY-1", "1958-02-03")
    receiver = driver.receiver
    try:
        sampler = MemorySampler(
            stack_pids(paths),
            lambda: len(receiver.arrived),
            args.every,
            paths.root / "memory-samples.json",
        )
        sampler.start()
        t0 = time.monotonic()
        run = Run("memory")
        await drive(driver, run, args.cases, args.window)
        elapsed = time.monotonic() - t0
        sampler.stop()
    finally:
        await driver.close()
    return {
        "machine": machine(),
        "command": " ".join(["python -m bench.memory", *sys.argv[1:]]),
        "cases": args.cases,
        "delivered": len(receiver.arrived),
        "errors": run.errors,
        "elapsed_s": elapsed,
        "samples": sampler.samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=10000)
    parser.add_argument("--window", type=int, default=40, help="cases in flight at most")
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--state-dir", default="", help="default: a fresh temporary directory")
    args = parser.parse_args()
    paths, result = on_own_stack(
        args.state_dir, "router-memory-", lambda p, i: main_async(args, p, i)
    )
    (paths.root / "memory.json").write_text(json.dumps(result, indent=1))
    print("\n" + report(result))
    print(f"\nraw samples in {paths.root / 'memory.json'}")


if __name__ == "__main__":
    main()
