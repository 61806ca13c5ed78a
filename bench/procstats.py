"""CPU and memory of each process of the stack, sampled while the load runs."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass
class ProcStat:
    name: str
    pid: int
    cpu_start: float = 0.0
    cpu_seconds: float = 0.0
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (time, RSS MiB)

    @property
    def peak_mb(self) -> float:
        """Peak resident memory: the kernel's high-water mark (VmHWM), else the samples."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return max((m for _, m in self.rss_mb), default=0.0)


def _tree_cpu(proc: psutil.Process) -> float:
    """CPU seconds of a process and its children (Orthanc, the FHIR peer's node...)."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


class Sampler:
    """Samples RSS every `interval` seconds in a thread; CPU from start to stop."""

    def __init__(self, pids: dict[str, int], interval: float = 0.5) -> None:
        self.stats = {name: ProcStat(name, pid) for name, pid in pids.items()}
        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        for name, proc in self._procs.items():
            self.stats[name].cpu_start = _tree_cpu(proc)
        self.t0 = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            now = time.monotonic() - self.t0
            for name, proc in self._procs.items():
                with contextlib.suppress(psutil.Error):
                    self.stats[name].rss_mb.append((now, proc.memory_info().rss / 2**20))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        for name, proc in self._procs.items():
            self.stats[name].cpu_seconds = _tree_cpu(proc) - self.stats[name].cpu_start
        return time.monotonic() - self.t0
