"""The S3 store's change log: prune SeaweedFS's filer metadata log.

SeaweedFS's filer records every change to its namespace (each object created,
overwritten or deleted) in a log it keeps as files of its own, one per UTC
minute: ``/topics/.system/log/YYYY-MM-DD/HH-MM.<filer id>``. It is what
metadata subscribers replay (``weed filer.meta.tail``, filer sync); the local
stack has none. Under the local broker every batch written, every batch the
reaper deletes and every consumer-group offset commit (an object overwrite) is
such a change: in a one-hour soak at 0.6 cases/s the log took 419 MB of the
store's 535 MB, about 157 changes a second, and it grows without bound.

SeaweedFS's own remedy, ``fs.log.purge`` in the master's maintenance scripts,
does not run under ``weed mini``: the master skips its scripts while an admin
server is connected, and ``weed mini`` always starts one. So the reaper
(deploy/local/reaper.py) calls :func:`prune` on every pass: minute files that
ended more than ``keep_seconds`` ago are deleted through the filer's HTTP API,
and a day directory left empty goes too. The deleted needles are garbage in the
volume until the master's automatic vacuum (every 15 minutes, at 30 % garbage)
compacts it. docs/performance.md, "The S3 store's change log", has the figures.

Standard library only, like infra.py.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

LOG_DIR = "/topics/.system/log"
DEFAULT_KEEP_SECONDS = 600  # nothing on the local stack reads the log; ten minutes for a look
PAGE = 1000
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MINUTE_RE = re.compile(r"^(\d{2})-(\d{2})(?:\.[0-9a-f]+)?$")


def minute_ends(day: str, name: str) -> dt.datetime | None:
    """When the minute a log file covers ends (UTC); None for a name not the log's."""
    found = MINUTE_RE.match(name)
    if not DAY_RE.match(day) or found is None:
        return None
    try:
        start = dt.datetime.strptime(f"{day} {found[1]}:{found[2]}", "%Y-%m-%d %H:%M")
    except ValueError:
        return None
    return start.replace(tzinfo=dt.UTC) + dt.timedelta(minutes=1)


def expired(day: str, names: list[str], now: dt.datetime, keep_seconds: float) -> list[str]:
    """The minute files of `day` that ended more than `keep_seconds` before `now`."""
    cutoff = now - dt.timedelta(seconds=keep_seconds)
    out = []
    for name in names:
        ends = minute_ends(day, name)
        if ends is not None and ends <= cutoff:
            out.append(name)
    return out


class Filer:
    """The two filer HTTP calls the pruning needs: list a directory, delete a path."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.base = url.rstrip("/")
        self.timeout = timeout

    def _url(self, path: str, query: dict[str, str] | None = None) -> str:
        quoted = urllib.parse.quote(path, safe="/")
        return self.base + quoted + ("?" + urllib.parse.urlencode(query) if query else "")

    def list_names(self, path: str) -> list[str]:
        """The entry names in directory `path` (all pages); [] if it does not exist."""
        names: list[str] = []
        last = ""
        while True:
            query = {"limit": str(PAGE)}
            if last:
                query["lastFileName"] = last
            request = urllib.request.Request(
                self._url(path.rstrip("/") + "/", query), headers={"Accept": "application/json"}
            )
            try:
                with HTTP.open(request, timeout=self.timeout) as response:
                    listing = json.loads(response.read() or b"{}")
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return names
                raise
            entries = listing.get("Entries") or []
            names += [str(e["FullPath"]).rsplit("/", 1)[-1] for e in entries]
            last = str(listing.get("LastFileName") or "")
            if not entries or not listing.get("ShouldDisplayLoadMore") or not last:
                return names

    def delete(self, path: str, recursive: bool = False) -> None:
        """Delete `path`; one already gone is not an error."""
        query = {"recursive": "true"} if recursive else None
        request = urllib.request.Request(self._url(path, query), method="DELETE")
        try:
            with HTTP.open(request, timeout=self.timeout):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise


@dataclass
class PruneReport:
    files_deleted: int = 0
    days_deleted: int = 0
    kept: int = 0

    def summary(self) -> str:
        return (
            f"change log: {self.files_deleted} minute files and {self.days_deleted} days"
            f" deleted, {self.kept} files kept"
        )


def prune(
    filer: Filer, now: dt.datetime, keep_seconds: float = DEFAULT_KEEP_SECONDS
) -> PruneReport:
    """Delete the change log's minute files older than `keep_seconds`, and empty days."""
    report = PruneReport()
    for day in sorted(filer.list_names(LOG_DIR)):
        if not DAY_RE.match(day):
            continue
        names = filer.list_names(f"{LOG_DIR}/{day}")
        doomed = expired(day, names, now, keep_seconds)
        for name in doomed:
            filer.delete(f"{LOG_DIR}/{day}/{name}")
        report.files_deleted += len(doomed)
        report.kept += len(names) - len(doomed)
        day_over = now - dt.timedelta(seconds=keep_seconds) >= (
            dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC) + dt.timedelta(days=1)
        )
        if len(doomed) == len(names) and day_over:
            # Nothing left and no minute of that day can still be written.
            filer.delete(f"{LOG_DIR}/{day}", recursive=True)
            report.days_deleted += 1
    return report
