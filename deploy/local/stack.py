"""Start, stop and inspect the whole local system: the embedded infrastructure
(deploy/local/infra.py) and the five services as separate processes.

    python -m deploy.local.stack up       # infra + services, waits until ready
    python -m deploy.local.stack status
    python -m deploy.local.stack down     # services, then infra; nothing left behind

State (PID files, logs, traces, endpoints) lives in ``LOCAL_STATE_DIR``
(default ``.run``). With ``LOCAL_PORTS=auto`` every port is picked free, so a
test run can sit beside a running demo.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("intake", "records_fetch", "assignment", "reporting", "notify")
DEFAULT_PORTS = {
    "intake": 8001,
    "records_fetch": 8002,
    "assignment": 8003,
    "reporting": 8004,
    "notify": 8005,
}
PREFIX = {
    "intake": "INTAKE",
    "records_fetch": "RECORDS_FETCH",
    "assignment": "ASSIGNMENT",
    "reporting": "REPORTING",
    "notify": "NOTIFY",
}


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def infra(self) -> Path:
        return self.root / "infra"

    @property
    def pids(self) -> Path:
        return self.root / "services" / "pids"

    @property
    def logs(self) -> Path:
        return self.root / "services" / "logs"

    @property
    def traces(self) -> Path:
        return self.root / "traces"

    @property
    def stack_file(self) -> Path:
        return self.root / "stack.json"


def state_paths() -> Paths:
    return Paths(Path(os.environ.get("LOCAL_STATE_DIR", REPO / ".run")).resolve())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def infra(command: str, paths: Paths) -> None:
    env = {**os.environ, "LOCAL_STATE_DIR": str(paths.infra)}
    subprocess.run(
        [sys.executable, str(REPO / "deploy/local/infra.py"), command], env=env, check=True
    )


# records_fetch's archive bucket on the stack's SeaweedFS (the broker has its own).
RECORDS_BUCKET = "records"


def infra_endpoints(paths: Paths) -> dict[str, str]:
    return json.loads((paths.infra / "endpoints.json").read_text())


def write_providers(paths: Paths, endpoints: dict[str, str]) -> Path:
    """Register the local PACS and FHIR peer as the demo tenants' providers."""
    provider = {"dicomweb_url": endpoints["dicomweb_url"], "fhir_url": endpoints["fhir_url"]}
    registry = {
        "demo-health": {"st-mary-imaging": provider, "st-mary-clinic": provider},
        "other-clinic": {"riverside": provider},
    }
    path = paths.root / "providers.json"
    path.write_text(json.dumps(registry, indent=1))
    return path


def service_env(paths: Paths, endpoints: dict[str, str], ports: dict[str, int]) -> dict[str, str]:
    providers = write_providers(paths, endpoints)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP": endpoints["kafka_bootstrap"],
        "MONGO_URI": endpoints["mongo_uri"],
        "TRACE_DIR": str(paths.traces),
        "RECORDS_FETCH_PROVIDERS_FILE": str(providers),
        # Intake refuses a case naming a provider this registry does not hold.
        "INTAKE_PROVIDERS_FILE": str(providers),
        # Retrieved DICOM files go to the stack's S3 (SeaweedFS), in their own bucket
        # (created by records_fetch), spooled under this stack's state on the way;
        # reviewers' signing keys stay with this stack's state.
        "RECORDS_FETCH_ARCHIVE": os.environ.get("RECORDS_FETCH_ARCHIVE", "s3"),
        "RECORDS_FETCH_S3_ENDPOINT": endpoints["s3_url"],
        "RECORDS_FETCH_S3_BUCKET": RECORDS_BUCKET,
        "RECORDS_FETCH_S3_REGION": endpoints["s3_region"],
        "RECORDS_FETCH_S3_ACCESS_KEY_ID": endpoints["s3_access_key_id"],
        "RECORDS_FETCH_S3_SECRET_ACCESS_KEY": endpoints["s3_secret_access_key"],
        "RECORDS_FETCH_SPOOL_DIR": str(paths.root / "records-spool"),
        "RECORDS_FETCH_RECORDS_DIR": str(paths.root / "records"),
        # Complete cases' images are imported into the review PACS (reviewers' viewer).
        "RECORDS_FETCH_REVIEW_PACS_URL": endpoints.get("review_pacs_url", ""),
        "REPORTING_KEY_DIR": str(paths.root / "keys"),
        # A retrieval killed mid-way is taken up again after one lease (renewed while alive).
        "RECORDS_FETCH_LEASE_SECONDS": os.environ.get("RECORDS_FETCH_LEASE_SECONDS", "10"),
        # Short group sessions: Tansu makes a restarted consumer wait ~2x this (infra.md).
        "KAFKA_SESSION_TIMEOUT_MS": os.environ.get("KAFKA_SESSION_TIMEOUT_MS", "3000"),
        "PYTHONUNBUFFERED": "1",
    }
    # The local stack is a development stack (loopback webhooks, plaintext broker, the
    # development credentials): without this a shell that does not export DEV_MODE
    # got five services refusing to start (shared/settings.py fails closed).
    env.setdefault("DEV_MODE", "true")
    env.update({f"{PREFIX[name]}_HTTP_PORT": str(port) for name, port in ports.items()})
    # The operations view's actions and links go to the other services' APIs.
    env.update(
        {
            f"ASSIGNMENT_{name.upper()}_URL": f"http://127.0.0.1:{port}"
            for name, port in ports.items()
            if name != "assignment"
        }
    )
    env.update(notify_mail_env(endpoints, ports))
    return env


def notify_mail_env(endpoints: dict[str, Any], ports: dict[str, int]) -> dict[str, str]:
    """notify's relay (the local aiosmtpd, STARTTLS verified against its
    certificate) and where it fetches a report's PDF for the treating clinician
    (reporting, with notify's local service key)."""
    env: dict[str, str] = {}
    if "smtp_port" in endpoints:
        env.update(
            NOTIFY_SMTP_HOST=str(endpoints["smtp_host"]),
            NOTIFY_SMTP_PORT=str(endpoints["smtp_port"]),
            NOTIFY_SMTP_STARTTLS="true",
            NOTIFY_SMTP_CA_FILE=str(endpoints["smtp_ca_file"]),
            NOTIFY_SMTP_USERNAME=str(endpoints["smtp_username"]),
            NOTIFY_SMTP_PASSWORD=str(endpoints["smtp_password"]),
        )
    if "reporting" in ports:
        env["NOTIFY_REPORTING_URL"] = f"http://127.0.0.1:{ports['reporting']}"
        env["NOTIFY_REPORTING_API_KEY"] = "notify-svc.dev-secret-notify-svc"
    return env


def pid_alive(pid: int) -> bool:
    """True if `pid` runs (a zombie waiting for init to reap it has stopped)."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def read_pid(path: Path) -> int | None:
    """The PID in a PID file (infra.py also records the process start time after it)."""
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def start_service(name: str, paths: Paths, env: dict[str, str]) -> int:
    pid_file = paths.pids / f"{name}.pid"
    pid = read_pid(pid_file)
    if pid and pid_alive(pid):
        return pid
    paths.pids.mkdir(parents=True, exist_ok=True)
    paths.logs.mkdir(parents=True, exist_ok=True)
    with (paths.logs / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{name}"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file.write_text(str(proc.pid))
    return proc.pid


def wait_ready(url: str, name: str, log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise SystemExit(f"{name} not ready after {timeout:.0f}s ({url}); log tail:\n{tail}")


def choose_ports(paths: Paths) -> dict[str, int]:
    if paths.stack_file.exists():
        return {k: int(v) for k, v in json.loads(paths.stack_file.read_text())["ports"].items()}
    if os.environ.get("LOCAL_PORTS") == "auto":
        return {name: free_port() for name in SERVICES}
    return dict(DEFAULT_PORTS)


ACL_FILE = REPO / "deploy" / "k8s" / "base" / "kafka-service-users.yaml"


def required_groups() -> dict[str, list[str]]:
    """{topic: [consumer group, ...]} of every service's subscriptions.

    Read from the generated ACL file (deploy/kafka_acls.py keeps it current from
    the subscriptions themselves): each topic a service may Read is one of its
    groups, ``router.<service>.<topic>`` (shared/settings.py consumer_group,
    shared/consumer.py). The local broker's reaper (deploy/local/reaper.py)
    deletes nothing of a topic until each of these groups has committed on it."""
    out: dict[str, list[str]] = {}
    service = topic = ""
    for line in ACL_FILE.read_text().splitlines():
        if match := re.match(r"\s+name: router-([a-z-]+)$", line):
            service = match.group(1).replace("-", "_")
        elif "- resource:" in line:
            match = re.search(r"\{type: topic, name: ([^,]+), patternType: literal\}", line)
            topic = match.group(1) if match else ""
        elif "operations: [Read" in line and service and topic:
            out.setdefault(topic, []).append(f"router.{service}.{topic}")
            topic = ""
    return out


def up(paths: Paths) -> dict[str, object]:
    """Start infra and services; returns what stack.json records."""
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.infra.mkdir(parents=True, exist_ok=True)
    (paths.infra / "required-groups.json").write_text(json.dumps(required_groups(), indent=1))
    infra("start", paths)
    endpoints = infra_endpoints(paths)
    ports = choose_ports(paths)
    env = service_env(paths, endpoints, ports)
    for name in SERVICES:
        start_service(name, paths, env)
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    stack = {"ports": ports, "urls": urls, "infra": endpoints, "traces": str(paths.traces)}
    paths.stack_file.write_text(json.dumps(stack, indent=1))
    record_started_pids(paths)
    for name in SERVICES:
        wait_ready(f"{urls[name]}/readyz", name, paths.logs / f"{name}.log")
    return stack


def record_started_pids(paths: Paths) -> None:
    """Keep every PID this stack started (services and infra), so a test or a
    person can check after `down` that none of them is left running."""
    pid_files = [*paths.pids.glob("*.pid"), *(paths.infra / "pids").glob("*.pid")]
    pids = {str(pid) for f in pid_files if (pid := read_pid(f))}
    with (paths.root / "started-pids.txt").open("a") as out:
        out.writelines(f"{pid}\n" for pid in sorted(pids))


def stop_pid(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group we started, then SIGKILL after `grace` seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.1)
        reap(pid)
    if pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)
        time.sleep(0.2)
        reap(pid)


def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop_services(paths: Paths) -> None:
    for name in SERVICES:
        pid_file = paths.pids / f"{name}.pid"
        pid = read_pid(pid_file)
        if pid:
            stop_pid(pid)
        pid_file.unlink(missing_ok=True)


def down(paths: Paths) -> None:
    stop_services(paths)
    if (paths.infra / "pids").exists():
        infra("stop", paths)
    paths.stack_file.unlink(missing_ok=True)


def status(paths: Paths) -> bool:
    ok = True
    for name in SERVICES:
        pid = read_pid(paths.pids / f"{name}.pid")
        alive = bool(pid and pid_alive(pid))
        ok &= alive
        print(f"{name:14} pid={pid or '-':<8} {'up' if alive else 'down'}")
    try:
        infra("status", paths)
    except subprocess.CalledProcessError:
        ok = False
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args()
    paths = state_paths()
    if args.command == "up":
        stack = up(paths)
        print(json.dumps(stack["urls"], indent=1))
    elif args.command == "down":
        down(paths)
    else:
        sys.exit(0 if status(paths) else 1)


if __name__ == "__main__":
    main()
