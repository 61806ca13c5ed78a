"""End-to-end benchmark of the case router, with the raw bounds measured in the same run.

    python -m bench.run                    # or: make bench
    python -m bench.run --cases 10000      # the memory-flatness run (hours at current rates)

Starts its own stack (deploy/local/stack.py, free ports, a fresh state dir),
seeds one patient's records, registers a partner webhook receiver, and then:

1. warm-up: a few cases end to end (consumer groups joined, connections open);
2. baselines on the same broker and database: raw aiokafka produce and consume
   (acks=all), raw pymongo upserts (the services' write concern, one client and
   five concurrent clients), raw pydicom parse of the seeded test files;
3. saturation: `--cases` submitted at once over HTTP, reviewers played by the
   harness, until every partner webhook arrived: the maximum sustained rate;
4. half load: `--half-cases` submitted open-loop at half that rate: latency;
5. low load: `--low-cases` at 0.5 cases/s: the latency floor, each case nearly
   alone in the stack.

Prints per-hop p50/p95/p99, cases/s with their ratio to each bound, and CPU and
peak memory per process; writes everything to <state>/bench.json. Stops all it
started. Per-case message and write counts are measured (the services'
Prometheus counters, the database's opcounters), not assumed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import psutil
from pymongo import MongoClient

from bench import baselines
from bench.load import Driver, Run
from bench.procstats import Sampler
from deploy.local import stack

REPO = Path(__file__).resolve().parents[1]
HOPS = [
    ("submitted→accepted", "submitted", "accepted"),
    ("accepted→records complete", "accepted", "records_complete"),
    ("records complete→assigned", "records_complete", "assigned"),
    ("submitted→assigned", "submitted", "assigned"),
    ("report submitted→webhook", "reported", "webhook"),
]
HARNESS = "harness"
INSTANCES_PER_CASE = 2  # the seeded study: MR_small + CT_small


LOW_RATE = 0.5  # cases/s: a case's path takes about a second, so cases barely overlap


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: a p99 is a latency that happened)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def case_times(run: Run, case_id: str) -> dict[str, float]:
    t = dict(run.history.get(case_id, {}))
    t["submitted"] = run.submitted[case_id]
    if case_id in run.reported:
        t["reported"] = run.reported[case_id]
    if case_id in run.delivered:
        t["webhook"] = run.delivered[case_id]
    return t


def hop_latencies(run: Run) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name, _, _ in HOPS}
    for case_id in run.submitted:
        t = case_times(run, case_id)
        for name, a, b in HOPS:
            if a in t and b in t:
                out[name].append((t[b] - t[a]) * 1000)
    return out


def throughput(run: Run, stage: str) -> float:
    """Cases/s from the first submission to the last case reaching `stage`."""
    ends = [case_times(run, c).get(stage) for c in run.submitted]
    done = [e for e in ends if e is not None]
    if not done:
        return 0.0
    return len(done) / max(1e-9, max(done) - min(run.submitted.values()))


def scrape_counters(urls: dict[str, str]) -> dict[str, dict[str, float]]:
    """Messages each service published and received so far (faststream's counters)."""
    out = {}
    for name, url in urls.items():
        text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
        counts = {"published": 0.0, "received": 0.0}
        for line in text.splitlines():
            m = re.match(
                r"faststream_(published|received)_messages_total\{[^}]*\} ([0-9.e+]+)", line
            )
            if m:
                counts[m.group(1)] += float(m.group(2))
        out[name] = counts
    return out


def db_ops(uri: str) -> dict[str, float]:
    """The database's operation counters: writes, and the reads and commands around them."""
    client: MongoClient[dict[str, Any]]
    with MongoClient(uri) as client:
        ops = client.admin.command("serverStatus")["opcounters"]
    return {
        "writes": float(ops["insert"] + ops["update"] + ops["delete"]),
        "reads": float(ops.get("query", 0) + ops.get("getmore", 0)),
        "commands": float(ops.get("command", 0)),
    }


def stack_pids(paths: stack.Paths) -> dict[str, int]:
    pids = {}
    for name in stack.SERVICES:
        if pid := stack.read_pid(paths.pids / f"{name}.pid"):
            pids[name] = pid
    for f in sorted((paths.infra / "pids").glob("*.pid")):
        if pid := stack.read_pid(f):
            pids[f"infra:{f.stem}"] = pid
    return pids


def bench_roster(paths: stack.Paths) -> Path:
    """The demo roster with room for every bench case (capacity is not under test)."""
    roster = json.loads((REPO / "deploy/local/roster.json").read_text())
    for r in roster:
        r["capacity"] = 1_000_000
    path = paths.root / "bench-roster.json"
    path.write_text(json.dumps(roster))
    return path


def start_profilers(
    pids: dict[str, int], out: Path
) -> list[tuple[str, subprocess.Popen[bytes], Path]]:
    out.mkdir(parents=True, exist_ok=True)
    profs = []
    # The database is a Python server here: profile it too, to name what it spends on.
    for name in [*stack.SERVICES, "infra:mongo"]:
        if name not in pids:
            continue
        target = out / f"{name.replace(':', '_')}.collapsed"
        cmd = [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--format",
            "raw",
            "--rate",
            "50",
            "-p",
            str(pids[name]),
            "-o",
            str(target),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        profs.append((name, proc, target))
    return profs


def stop_profilers(profs: list[tuple[str, subprocess.Popen[bytes], Path]]) -> dict[str, list[str]]:
    """Stop py-spy and name each service's top frames by inclusive share of samples."""
    tops: dict[str, list[str]] = {}
    for name, proc, target in profs:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        tops[name] = top_frames(target)
    return tops


def top_frames(collapsed: Path, k: int = 6) -> list[str]:
    if not collapsed.exists():
        return ["(no profile)"]
    inclusive: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack_s, _, count_s = line.rpartition(" ")
        count = int(count_s)
        total += count
        for frame in set(stack_s.split(";")):
            # Frames look like "func (path/to/file.py:123)": keep module-level names readable.
            frame = re.sub(r":\d+\)$", ")", frame)
            inclusive[frame] = inclusive.get(frame, 0) + count
    interesting = [
        (n, f)
        for f, n in inclusive.items()
        if any(
            s in f
            for s in (
                "pymongo",
                "aiokafka",
                "httpx",
                "pydantic",
                "opentelemetry",
                "services/",
                "shared/",
                "uvicorn",
                "starlette",
                "faststream",
                "secantus",
            )
        )
        and "process_idle" not in f
    ]
    return [
        f"{100 * n / max(total, 1):5.1f}% {f}" for n, f in sorted(interesting, reverse=True)[:k]
    ]


async def bench(
    args: argparse.Namespace, paths: stack.Paths, info: dict[str, Any]
) -> dict[str, Any]:
    urls, infra = info["urls"], info["infra"]
    run_id = time.strftime("%H%M%S")
    driver = await Driver.subscribed(urls, infra, paths.root, f"MRN-BENCH-{run_id}", "1961-04-12")
    receiver = driver.receiver
    try:
        print("warm-up ...", flush=True)
        warm = await driver.phase("warm-up", f"{run_id}w", 3, None, 120)
        if len(warm.delivered) != 3:
            raise SystemExit(
                "warm-up cases were not delivered: the pipeline is broken; see logs in "
                f"{paths.logs}"
            )
        print("baselines ...", flush=True)
        base = await baselines.measure(
            infra["kafka_bootstrap"],
            infra["mongo_uri"],
            messages=args.raw_messages,
            upserts=args.raw_upserts,
            clients=len(stack.SERVICES),
        )
        pids = stack_pids(paths)
        # The harness (HTTP clients, reviewers, webhook receiver) shares the cores too:
        # shown, but not counted in the machine bound, which is the pipeline's own.
        pids[HARNESS] = os.getpid()
        sampler = Sampler(pids)
        counters0, ops0 = scrape_counters(urls), db_ops(infra["mongo_uri"])
        profs = start_profilers(pids, paths.root / "profiles") if args.profile else []
        sampler.start()
        print(f"saturation: {args.cases} cases at once ...", flush=True)
        sat = await driver.phase("saturation", f"{run_id}s", args.cases, None, args.timeout)
        elapsed = sampler.stop()
        tops = stop_profilers(profs) if profs else {}
        counters1, ops1 = scrape_counters(urls), db_ops(infra["mongo_uri"])
        max_rate = throughput(sat, "assigned")
        half_rate = max(0.5, max_rate / 2)
        print(f"half load: {args.half_cases} cases at {half_rate:.1f}/s ...", flush=True)
        half = await driver.phase(
            "half load", f"{run_id}h", args.half_cases, half_rate, args.timeout
        )
        # The floor: what a case's path costs when it has the stack (nearly) to itself.
        print(f"low load: {args.low_cases} cases at {LOW_RATE}/s ...", flush=True)
        low = await driver.phase("low load", f"{run_id}l", args.low_cases, LOW_RATE, args.timeout)
    finally:
        await driver.close()
    n = max(1, len(sat.submitted))
    published = sum(c["published"] for c in counters1.values()) - sum(
        c["published"] for c in counters0.values()
    )
    received = sum(c["received"] for c in counters1.values()) - sum(
        c["received"] for c in counters0.values()
    )
    return {
        "machine": machine(),
        "command": " ".join(["python -m bench.run", *sys.argv[1:]]),
        "baselines": base.__dict__,
        "per_case": {
            "published": published / n,
            "received": received / n,
            "db_writes": (ops1["writes"] - ops0["writes"]) / n,
            "db_reads": (ops1["reads"] - ops0["reads"]) / n,
            "db_commands": (ops1["commands"] - ops0["commands"]) / n,
            "dicom_instances": INSTANCES_PER_CASE,
        },
        "phases": {r.label: summarize(r) for r in (sat, half, low)},
        "half_rate": half_rate,
        "processes": {
            s.name: {
                "cpu_s": s.cpu_seconds,
                "cpu_pct": 100 * s.cpu_seconds / elapsed,
                "peak_mb": s.peak_mb,
                "rss_first_mb": s.rss_mb[0][1] if s.rss_mb else 0,
                "rss_last_mb": s.rss_mb[-1][1] if s.rss_mb else 0,
            }
            for s in sampler.stats.values()
        },
        "elapsed_s": elapsed,
        "profile_top": tops,
        "webhooks_verified": all(d["verified"] for d in receiver.deliveries),
    }


def summarize(run: Run) -> dict[str, Any]:
    lat = hop_latencies(run)
    return {
        "cases": len(run.submitted),
        "errors": run.errors,
        "delivered": len(run.delivered),
        "cases_per_s_assigned": throughput(run, "assigned"),
        "cases_per_s_delivered": throughput(run, "webhook"),
        "latency_ms": {
            h: {
                "n": len(v),
                "p50": percentile(v, 50),
                "p95": percentile(v, 95),
                "p99": percentile(v, 99),
            }
            for h, v in lat.items()
        },
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": psutil.cpu_count(),
        "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def bounds(r: dict[str, Any]) -> dict[str, float]:
    """Cases/s each component could carry alone, from its raw rate and the per-case load;
    and what the machine's cores could carry, from the CPU all processes spent per case."""
    b, pc = r["baselines"], r["per_case"]
    broker_s_per_case = pc["published"] / b["produce_per_s"] + pc["received"] / b["consume_per_s"]
    cpu_per_case = sum(p["cpu_s"] for n, p in r["processes"].items() if n != HARNESS) / max(
        1, r["phases"]["saturation"]["cases"]
    )
    return {
        f"machine CPU ({r['machine']['cores']} cores, all processes)": r["machine"]["cores"]
        / max(cpu_per_case, 1e-9),
        "broker (aiokafka produce+consume)": 1 / max(broker_s_per_case, 1e-9),
        f"database ({b['clients']} concurrent upsert clients)": b["upsert_per_s_n"]
        / max(pc["db_writes"], 1e-9),
        "database (1 upsert client)": b["upsert_per_s_1"] / max(pc["db_writes"], 1e-9),
        "pydicom parse": b["dicom_parse_per_s"] / pc["dicom_instances"],
    }


def report(r: dict[str, Any]) -> str:
    b, pc, m = r["baselines"], r["per_case"], r["machine"]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, {m['mem_gb']} GiB, Python {m['python']}",
        f"command: {r['command']}",
        "",
        "baselines (same run, same broker/database):",
        f"  aiokafka produce (acks=all)   {b['produce_per_s']:9.0f} msg/s",
        f"  aiokafka consume              {b['consume_per_s']:9.0f} msg/s",
        f"  pymongo upsert, 1 client      {b['upsert_per_s_1']:9.0f} /s   (w=majority, j=true)",
        f"  pymongo upsert, {b['clients']} clients     {b['upsert_per_s_n']:9.0f} /s",
        f"  pydicom parse (+pixels)       {b['dicom_parse_per_s']:9.0f} files/s "
        f"({b['dicom_bytes']} B avg)",
        f"per case (measured): {pc['published']:.1f} published, {pc['received']:.1f} consumed, "
        f"{pc['db_writes']:.1f} database writes ({pc.get('db_reads', 0):.1f} reads, "
        f"{pc.get('db_commands', 0):.1f} other commands), {pc['dicom_instances']} DICOM instances",
        "",
    ]
    bnd = bounds(r)
    sat = r["phases"]["saturation"]
    lines.append(f"{'pipeline figure':44} {'value':>9}  " + "  ".join(f"÷ {k}" for k in bnd))
    lines.append(
        "  bounds (cases/s)" + " " * 38 + "  ".join(f"{v:>{len(k) + 2}.1f}" for k, v in bnd.items())
    )
    for label, key in (
        ("cases/s submitted→assigned (saturation)", "cases_per_s_assigned"),
        ("cases/s submitted→webhook (saturation)", "cases_per_s_delivered"),
    ):
        v = sat[key]
        lines.append(
            f"  {label:42} {v:9.2f}  "
            + "  ".join(f"{v / bv:>{len(k) + 2}.2f}" for k, bv in bnd.items())
        )
    tight = min(bnd, key=lambda k: bnd[k])
    lines.append(f"  tightest bound: {tight} ({bnd[tight]:.1f} cases/s)")
    lines.append("")
    for label, ph in r["phases"].items():
        extra = {
            "saturation": " (all at once)",
            "half load": f" at {r['half_rate']:.1f} cases/s",
            "low load": f" at {LOW_RATE} cases/s",
        }[label]
        lines.append(
            f"latency, {label}{extra}: {ph['cases']} cases, {ph['delivered']} delivered, "
            f"{ph['errors']} submit errors"
        )
        lines.append(f"  {'hop':28} {'n':>5} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}")
        for hop, s in ph["latency_ms"].items():
            lines.append(f"  {hop:28} {s['n']:5d} {s['p50']:9.0f} {s['p95']:9.0f} {s['p99']:9.0f}")
    lines.append("")
    lines.append(f"processes during saturation ({r['elapsed_s']:.1f} s):")
    lines.append(
        f"  {'process':14} {'CPU s':>7} {'CPU %':>6} {'peak MiB':>9} {'RSS first→last':>16}"
    )
    for name, p in r["processes"].items():
        lines.append(
            f"  {name:14} {p['cpu_s']:7.1f} {p['cpu_pct']:6.0f} {p['peak_mb']:9.0f} "
            f"{p['rss_first_mb']:7.0f}→{p['rss_last_mb']:<7.0f}"
        )
    for name, frames in r["profile_top"].items():
        lines.append(f"profile {name} (inclusive share of samples):")
        lines += [f"    {f}" for f in frames]
    lines.append(f"partner webhooks all verified: {r['webhooks_verified']}")
    return "\n".join(lines)


def on_own_stack(
    state_dir: str,
    prefix: str,
    work: Callable[[stack.Paths, dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]],
) -> tuple[stack.Paths, dict[str, Any]]:
    """Start a stack of its own (fresh state directory unless given, free ports, the
    bench roster), run `work` on it, and stop everything it started, whatever happens."""
    if state_dir and Path(state_dir).exists() and any(Path(state_dir).iterdir()):
        # A previous run's stores would be replayed into this one: its consumer groups
        # resume on old topics and its counts and webhooks mix with the new ones.
        raise SystemExit(f"--state-dir must be new or empty: {state_dir} holds a previous run")
    os.environ["LOCAL_STATE_DIR"] = state_dir or tempfile.mkdtemp(prefix=prefix)
    os.environ["LOCAL_PORTS"] = "auto"
    paths = stack.state_paths()
    paths.root.mkdir(parents=True, exist_ok=True)
    os.environ["ASSIGNMENT_ROSTER_FILE"] = str(bench_roster(paths))
    print(f"starting the stack in {paths.root} ...", flush=True)
    try:
        info = stack.up(paths)
        result = asyncio.run(work(paths, info))
    finally:
        print("stopping the stack ...", flush=True)
        stack.down(paths)
    return paths, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=200, help="cases in the saturation phase")
    parser.add_argument("--half-cases", type=int, default=60, help="cases in the half-load phase")
    parser.add_argument(
        "--low-cases", type=int, default=10, help=f"cases at {LOW_RATE}/s: the latency floor"
    )
    parser.add_argument("--raw-messages", type=int, default=20000)
    parser.add_argument("--raw-upserts", type=int, default=600)
    parser.add_argument("--timeout", type=float, default=420, help="seconds per phase")
    parser.add_argument("--profile", action="store_true", help="py-spy the services (slows them)")
    parser.add_argument("--state-dir", default="", help="default: a fresh temporary directory")
    args = parser.parse_args()
    t0 = time.monotonic()
    paths, result = on_own_stack(args.state_dir, "router-bench-", lambda p, i: bench(args, p, i))
    (paths.root / "bench.json").write_text(json.dumps(result, indent=1, default=str))
    print("\n" + report(result))
    print(f"\nwhole run {time.monotonic() - t0:.0f} s; raw results in {paths.root / 'bench.json'}")


if __name__ == "__main__":
    main()
