"""The sample archive `sluice init` writes: recent (it ends yesterday, UTC, so the sample
project passes its own freshness check) and otherwise deterministic."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from loader.sources.archive import received_day
from loader.sources.sample import archive_days, write_archive


def _days(files: list[Path]) -> list[date]:
    return sorted({d for d in (received_day(str(f)) for f in files) if d is not None})


def test_sample_archive_ends_yesterday(tmp_path: Path) -> None:
    files = write_archive(tmp_path, 3000, events_per_file=500, files_per_day=2)
    yesterday = datetime.now(timezone.utc).date() - timedelta(days=1)
    assert archive_days(3000, 2, 500) == 3
    assert _days(files) == [yesterday - timedelta(days=2), yesterday - timedelta(days=1), yesterday]


def test_sample_archive_is_deterministic_for_a_first_day(tmp_path: Path) -> None:
    first = date(2026, 3, 1)
    a = write_archive(tmp_path / "a", 1200, events_per_file=300, files_per_day=2, first_day=first)
    b = write_archive(tmp_path / "b", 1200, events_per_file=300, files_per_day=2, first_day=first)
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))
    assert _days(a) == [first, first + timedelta(days=1)]
