"""Run SecantusDB (a MongoDB-wire server) as the local Mongo of the stack.

Started by ``deploy/local/infra.py`` in its own process group. It uses the
Python API instead of the ``secantusd-py`` CLI because only the API honours
``ttl_sweep_seconds`` (the CLI ignores it) and because the CLI auto-discovers a
``secantusd.toml`` in the working directory or home, which would make the
local stack depend on stray files.

SecantusDB is GPL-2.0: it runs as a separate server process, never imported
into the project's services.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from secantus import SecantusDBServer

# SecantusDB's own default, kept explicit: infra.MONGO_OPTIONS is derived from it.
IDLE_CLOSE_SECONDS = 300.0
# How often expired TTL-indexed documents are deleted. SecantusDB's sweep reads and
# decodes every document of every TTL-indexed collection, holding the store's lock
# (MongoDB's TTL monitor walks the index instead). The only TTL index here is the
# audit trail's retention, counted in years, while the audit collections grow with
# every API call: swept every second, as this stack first did, the sweep was a
# third of the server's CPU three minutes into a soak and grew with the data
# (docs/performance.md). Hourly enforces a retention of years to within the hour.
TTL_SWEEP_SECONDS = 3600.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=27017)
    parser.add_argument("--storage-path", required=True)
    # A capped oplog keeps long local runs from growing the store without
    # bound; change streams only need recent entries.
    parser.add_argument("--oplog-max-entries", type=int, default=20_000)
    parser.add_argument("--oplog-retention-seconds", type=float, default=3600.0)
    # SecantusDB closes a connection idle this long; clients must drop theirs sooner
    # (infra.MONGO_OPTIONS maxIdleTimeMS), or they reuse one the server has closed.
    parser.add_argument("--client-idle-timeout", type=float, default=IDLE_CLOSE_SECONDS)
    parser.add_argument("--ttl-sweep-seconds", type=float, default=TTL_SWEEP_SECONDS)
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    server = SecantusDBServer(
        host=args.host,
        port=args.port,
        storage_path=args.storage_path,
        ttl_sweep_seconds=args.ttl_sweep_seconds,
        # configureFailPoint lets any client that reaches the port break
        # every connection: keep it off, as mongod does.
        enable_test_commands=False,
        # Plain w=1 lost acknowledged writes on SIGKILL; fsync the journal on
        # every commit so an acknowledged write is a durable write.
        sync_on_commit=True,
        durable=True,
        oplog_max_entries=args.oplog_max_entries,
        oplog_retention_seconds=args.oplog_retention_seconds,
        client_idle_timeout_s=args.client_idle_timeout,
    )

    def handle_signal(signum: int, _frame: object) -> None:
        logging.info("received signal %s, stopping", signum)
        server.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, handle_signal)
    signal.signal(signal.SIGINT, handle_signal)

    server.start()
    logging.info("SecantusDB listening on %s", server.uri)
    server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
