"""The change-log pruning's rules (deploy/local/filer_log.py), on an in-memory filer.

The same pruning against the real SeaweedFS filer: tests/integration/test_s3_change_log.py."""

from __future__ import annotations

import datetime as dt

from deploy.local import filer_log
from deploy.local.filer_log import LOG_DIR

NOW = dt.datetime(2026, 12, 5, 8, 30, 20, tzinfo=dt.UTC)


class MemoryFiler(filer_log.Filer):
    """Directories as a dict of name lists; records what was deleted."""

    def __init__(self, tree: dict[str, list[str]]) -> None:
        super().__init__("http://unused")
        self.tree = tree
        self.deleted: list[str] = []

    def list_names(self, path: str) -> list[str]:
        return list(self.tree.get(path.rstrip("/"), []))

    def delete(self, path: str, recursive: bool = False) -> None:
        self.deleted.append(path)
        parent, name = path.rsplit("/", 1)
        if name in self.tree.get(parent, []):
            self.tree[parent].remove(name)
        if recursive:
            self.tree.pop(path, None)


def test_a_minute_file_ends_a_minute_after_its_name() -> None:
    ends = filer_log.minute_ends("2026-12-04", "22-30.17610af3")
    assert ends == dt.datetime(2026, 12, 4, 22, 31, tzinfo=dt.UTC)
    assert filer_log.minute_ends("2026-12-04", "23-59") == dt.datetime(
        2026, 12, 5, 0, 0, tzinfo=dt.UTC
    )


def test_names_not_the_logs_are_never_candidates() -> None:
    for day, name in [
        ("2026-12-04", "offsets.json"),
        ("2026-12-04", "25-00.17610af3"),  # no such hour
        ("2026-12-04", "22-30.zz"),
        ("2026-13-01", "22-30.17610af3"),  # no such month
        ("latest", "22-30.17610af3"),
    ]:
        assert filer_log.minute_ends(day, name) is None
        assert filer_log.expired(day, [name], NOW, 0) == []


def test_only_minutes_that_ended_before_the_keep_window_expire() -> None:
    names = ["07-28.a1", "07-29.a1", "07-30.a1", "08-30.a1"]
    # keep 3600 s: the cutoff is 07:30:20; 07-29 ended 07:30:00, 07-30 ends 07:31.
    assert filer_log.expired("2026-12-05", names, NOW, 3600) == ["07-28.a1", "07-29.a1"]
    assert filer_log.expired("2026-12-05", names, NOW, 10 * 3600) == []


def test_prune_deletes_old_minutes_and_past_days_left_empty() -> None:
    filer = MemoryFiler(
        {
            LOG_DIR: ["2026-12-03", "2026-12-04", "2026-12-05", "notes"],
            f"{LOG_DIR}/2026-12-03": ["10-00.a1", "10-01.a1"],
            f"{LOG_DIR}/2026-12-04": ["23-59.a1"],
            f"{LOG_DIR}/2026-12-05": ["07-00.a1", "08-29.a1", "08-30.a1"],
        }
    )
    report = filer_log.prune(filer, NOW, keep_seconds=3600)
    assert report.files_deleted == 4
    assert report.days_deleted == 2
    assert report.kept == 2
    assert filer.tree[f"{LOG_DIR}/2026-12-05"] == ["08-29.a1", "08-30.a1"]
    assert f"{LOG_DIR}/2026-12-03" in filer.deleted and f"{LOG_DIR}/notes" not in filer.deleted
    assert f"{LOG_DIR}/2026-12-05" not in filer.deleted  # today is still written


def test_a_day_whose_last_minute_is_still_kept_stays() -> None:
    late = dt.datetime(2026, 12, 5, 0, 10, tzinfo=dt.UTC)
    filer = MemoryFiler(
        {LOG_DIR: ["2026-12-04"], f"{LOG_DIR}/2026-12-04": ["22-00.a1", "23-59.a1"]}
    )
    report = filer_log.prune(filer, late, keep_seconds=3600)
    assert (report.files_deleted, report.days_deleted, report.kept) == (1, 0, 1)
    assert filer.tree[f"{LOG_DIR}/2026-12-04"] == ["23-59.a1"]
