"""Backfills staged in parallel and committed in archive order leave the tables a serial
load leaves: the same columns, types, rows, rescued values and users' latest traits,
whatever order the stages finish in; crashes and changed files do not change that."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest

from loader.sources.sample import write_archive
from loader.sync.backfill import run_backfill
from loader.sync.pipeline import Loader, SyncReport
from loader.sync.staging import (
    StagingArea,
    commit_staged,
    plan_stages,
    stage,
    staged_reads,
)
from tests.helpers import identify, track, write_ndjson
from tests.test_archive_s3 import s3_endpoint  # noqa: F401 - the fixture
from tests.test_duckdb_arrow_path import _same, content
from tests.test_ledger import everything

FIRST, LAST = date(2026, 11, 1), date(2026, 11, 4)
DAYS = (FIRST, LAST)


def _day_folder(root: Path, day: date) -> Path:
    ms = int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)
    return root / "segment-logs" / "sample-source" / str(ms)


def _at(day: date, hour: int) -> str:
    return f"{day.isoformat()}T{hour:02d}:00:00Z"


def _archive(root: Path) -> Path:
    """Four days of the sample, plus what depends on order: a property typed by its
    first value (an int on day 1, text on day 2 and a new column's first value on day
    3 that day 4 contradicts, twice, the second time after a re-send), traits whose
    latest value is on a later day, the same messageId on two days, and a broken line."""
    write_archive(root, 4000, files_per_day=2, events_per_file=500, first_day=FIRST)
    d1, d2, d3, d4 = (FIRST.replace(day=n) for n in range(1, 5))
    write_ndjson(
        _day_folder(root, d1) / "zz-order.gz",
        [
            track("o-1", "Plan Changed", _at(d1, 9), amount=1, note="x"),
            identify("o-i1", "ada", _at(d1, 9), _at(d1, 9), plan="free", seats=1),
        ],
    )
    write_ndjson(
        _day_folder(root, d2) / "zz-order.gz",
        [
            track("o-2", "Plan Changed", _at(d2, 9), amount="many"),
            track("o-1", "Plan Changed", _at(d2, 9), amount=99),  # a re-send of day 1's
            identify("o-i2", "ada", _at(d2, 9), _at(d2, 9), plan="pro"),
        ],
    )
    write_ndjson(
        _day_folder(root, d3) / "zz-order.gz",
        [track("o-3", "Plan Changed", _at(d3, 9), level=True), b'{"type": "track", broken'],
    )
    write_ndjson(
        _day_folder(root, d4) / "zz-order.gz",
        [
            track("o-4", "Plan Changed", _at(d4, 9), level="high", amount=4.5),
            identify("o-i4", "ada", _at(d4, 9), _at(d4, 9), plan="enterprise", seats="ten"),
        ],
    )
    # A later file of day 4 re-sends o-4 (dropped from its staged rows at commit) and
    # contradicts day 3's type again (its rows laid out anew from the rows as read).
    write_ndjson(
        _day_folder(root, d4) / "zzz-again.gz",
        [
            track("o-4", "Plan Changed", _at(d4, 9), level="high", amount=4.5),
            track("o-5", "Plan Changed", _at(d4, 10), level="low", amount=5),
        ],
    )
    return root


@pytest.fixture
def archive(tmp_path: Path) -> str:
    return str(_archive(tmp_path / "archive") / "segment-logs")


def _serial(wh: Any, url: str, schema: str) -> SyncReport:
    return Loader(wh, batch_lines=700, readers=0).replay(url, schema, *DAYS)


def _planned(
    wh: Any, archive: str, tmp_path: Path, **plan: Any
) -> tuple[Loader, StagingArea, list]:
    """A loader, a staging area and the planned partitions of DAYS into schema `staged`."""
    loader = Loader(wh, batch_lines=700, readers=0)
    area = StagingArea(str(tmp_path / "staging"))
    return loader, area, plan_stages(loader, archive, "staged", DAYS, replay=True, **plan)


def _commit_all(
    loader: Loader, archive: str, staged: list, area: StagingArea, restage: Any
) -> SyncReport:
    report = SyncReport("r", "staged", loader.warehouse.target_name, archive, "")
    loader.warehouse.ensure_bookkeeping()
    for s in staged:
        commit_staged(loader, archive, s, area, report, restage)
    return report


def _staged_files(area: Path) -> list[Path]:
    return [p for p in area.rglob("*") if p.is_file()] if area.exists() else []


def test_parallel_backfill_gives_the_serial_tables(open_wh, archive: str, tmp_path: Path) -> None:
    wh = open_wh()
    serial = _serial(wh, archive, "serial")
    area = tmp_path / "staging"
    report = run_backfill(
        Loader(wh, batch_lines=700), archive, "staged", DAYS, StagingArea(str(area)), workers=3
    )
    assert report.status == "success" and report.warnings == []
    assert report.staged is not None and report.staged["partitions"] == 4
    assert report.staged["lock_held_s"] > 0
    assert report.rows_loaded == serial.rows_loaded
    assert report.rejects == serial.rejects == 2  # the sample's broken line, and day 3's
    # Rescued values are compared in the tables (content); the report counts a re-sent
    # row's rescued values when the batch offers it, and batches differ from serial's.
    assert report.rescued_values >= serial.rescued_values > 0
    _same(content(wh, "serial"), content(wh, "staged"))
    types = wh.read_schema("staged")
    # Day 1's int decided `amount`, day 3's boolean decided `level`.
    assert types["plan_changed"]["amount"].value == "bigint"
    assert types["plan_changed"]["level"].value == "boolean"
    (plan,) = [r for r in wh.query("SELECT plan FROM staged.users WHERE id = 'ada'")]
    assert plan == ("enterprise",)
    assert _staged_files(area) == []  # committed partitions leave nothing staged
    # The broken line of day 3 is one reject; the rest of its file loaded.
    (loaded,) = wh.query("SELECT count(*) FROM staged.plan_changed WHERE id = 'o-3'")
    assert loaded == (1,)
    # A staged replay, and a staged pending run, of loaded days change nothing: every
    # table and `_sluice`, every column (uuid_ts, loaded_at...), byte for byte.
    before = everything(wh, "staged")
    for replay in (True, False):
        again = run_backfill(
            Loader(wh, batch_lines=700), archive, "staged", DAYS, StagingArea(str(area)), 2, replay
        )
        # (users/accounts count the profiles a replay rebuilds, as a serial replay does)
        assert {
            t: n for t, n in again.rows_loaded.items() if n and t not in ("users", "accounts")
        } == {}
        assert everything(wh, "staged") == before


@pytest.mark.parametrize("finish_order", [[3, 2, 1, 0], [0, 2, 3, 1]])
def test_stages_finishing_in_any_order_commit_as_serial(
    open_wh, archive: str, tmp_path: Path, finish_order: list[int]
) -> None:
    """Stages run in `finish_order` (the late partition last), commits in day order."""
    wh = open_wh()
    _serial(wh, archive, "serial")
    loader, area, orders = _planned(wh, archive, tmp_path)
    assert [o.day for o in orders] == [FIRST.replace(day=n) for n in range(1, 5)]
    staged: dict[int, Any] = {}
    for i in finish_order:
        staged[i] = stage(orders[i], loader.read_options(), area)
    report = _commit_all(
        loader, archive, [staged[i] for i in range(len(orders))], area, _no_restage
    )
    assert report.warnings == []
    _same(content(wh, "serial"), content(wh, "staged"))


def _no_restage(order: Any) -> Any:
    raise AssertionError(f"partition {order.label} was staged again")


def test_a_commit_killed_between_partitions_then_rerun_gives_the_serial_tables(
    open_wh, archive: str, tmp_path: Path
) -> None:
    wh = open_wh()
    _serial(wh, archive, "serial")
    area = tmp_path / "staging"
    committed: list[date | None] = []

    def crash_after_two(order: Any, clock: Any) -> None:
        committed.append(order.day)
        if len(committed) == 2:
            raise KeyboardInterrupt  # the process dies between two partitions

    def pending_run(**hooks: Any) -> SyncReport:
        staging = StagingArea(str(area))
        loader = Loader(wh, batch_lines=700)
        return run_backfill(loader, archive, "staged", DAYS, staging, 2, replay=False, **hooks)

    with pytest.raises(KeyboardInterrupt):
        pending_run(on_committed=crash_after_two)
    assert committed == [FIRST, FIRST.replace(day=2)]
    # The two committed days' stages are gone; what remains is never committed as is.
    labels = {p.relative_to(area).parts[2] for p in _staged_files(area)}
    assert labels <= {"2026-11-03", "2026-11-04"}
    report = pending_run()
    assert report.files_skipped > 0 and report.staged["partitions"] == 2
    _same(content(wh, "serial"), content(wh, "staged"))
    assert _staged_files(area) == []


def test_a_stage_killed_part_way_is_never_committed(open_wh, archive: str, tmp_path: Path) -> None:
    """A stage folder without its manifest (the stage died) is left alone by commits of
    other stages until its own day commits, which deletes it."""
    wh = open_wh()
    _serial(wh, archive, "serial")
    loader, area, orders = _planned(wh, archive, tmp_path)
    cut = stage(orders[1], loader.read_options(), area)
    (Path(cut.folder) / "manifest.json").unlink()
    (Path(cut.folder) / "000001.read").unlink()
    report = run_backfill(loader, archive, "staged", DAYS, area, workers=2)
    assert report.warnings == []
    _same(content(wh, "serial"), content(wh, "staged"))
    assert not Path(cut.folder).exists()


def test_a_file_changed_since_staging_is_refused_and_staged_again(
    open_wh, archive: str, tmp_path: Path
) -> None:
    wh = open_wh()
    loader, area, orders = _planned(wh, archive, tmp_path)
    staged = [stage(o, loader.read_options(), area) for o in orders]
    changed = _day_folder(Path(archive).parent, FIRST.replace(day=2)) / "zz-order.gz"
    write_ndjson(
        changed,
        [track("o-2", "Plan Changed", _at(FIRST.replace(day=2), 9), amount=2, extra="new")],
    )
    os.utime(changed, (1, 1))  # a different version even within the clock's resolution
    restaged: list[str] = []

    def restage(order: Any) -> Any:
        restaged.append(order.label)
        return stage(order, loader.read_options(), area)

    report = _commit_all(loader, archive, staged, area, restage)
    assert restaged == ["2026-11-02"]
    assert any("changed after the partition was staged" in w for w in report.warnings)
    _serial(wh, archive, "serial")  # of the archive as it is now
    _same(content(wh, "serial"), content(wh, "staged"))


def test_a_tampered_staged_file_is_refused_before_it_is_read(
    open_wh, archive: str, tmp_path: Path
) -> None:
    wh = open_wh()
    _serial(wh, archive, "serial")
    loader, area, orders = _planned(wh, archive, tmp_path)
    staged = [stage(o, loader.read_options(), area) for o in orders]
    blob = Path(staged[2].folder) / "000000.read"
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    with pytest.raises(Exception, match="does not match its checksum"):
        list(staged_reads(staged[2], area, {f.url for f in staged[2].order.files}))
    report = _commit_all(
        loader, archive, staged, area, lambda o: stage(o, loader.read_options(), area)
    )
    assert any("checksum" in w for w in report.warnings)
    _same(content(wh, "serial"), content(wh, "staged"))


@pytest.fixture
def s3_archive_with_secret(s3_endpoint: str, tmp_path: Path) -> Iterator[tuple[str, dict]]:  # noqa: F811
    local = _archive(tmp_path / "local")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="staged-archive")
    for path in local.rglob("*.gz"):
        s3.upload_file(str(path), "staged-archive", str(path.relative_to(local)))
    options = {
        "key": "AKIASLUICESTAGINGKEY",
        "secret": "sluice-staging-secret-never-written",
        "client_kwargs": {"endpoint_url": s3_endpoint},
    }
    yield "s3://staged-archive/segment-logs/", options


def test_stages_on_s3_hold_no_secret_and_load_like_serial(
    open_wh,
    s3_archive_with_secret: tuple[str, dict],
    s3_endpoint: str,  # noqa: F811
) -> None:
    url, options = s3_archive_with_secret
    wh = open_wh()
    loader = Loader(wh, batch_lines=700, storage_options=options, readers=0)
    Loader(wh, batch_lines=700, storage_options=options, readers=0).replay(url, "serial", *DAYS)
    area = StagingArea("s3://staged-archive/_staging", options)
    orders = plan_stages(loader, url, "staged", DAYS, replay=True)
    staged = [stage(o, loader.read_options(), area) for o in orders]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    listed = s3.list_objects_v2(Bucket="staged-archive", Prefix="_staging/")["Contents"]
    assert len(listed) == sum(len(s.checksums) + 1 for s in staged)
    for obj in listed:
        body = s3.get_object(Bucket="staged-archive", Key=obj["Key"])["Body"].read()
        assert options["key"].encode() not in body
        assert options["secret"].encode() not in body
    report = SyncReport("r", "staged", wh.target_name, url, "")
    wh.ensure_bookkeeping()
    for s in staged:
        commit_staged(loader, url, s, area, report, _no_restage)
    _same(content(wh, "serial"), content(wh, "staged"))
    left = s3.list_objects_v2(Bucket="staged-archive", Prefix="_staging/")
    assert left.get("KeyCount", 0) == 0


def test_cli_replay_with_workers_gives_the_tables_of_a_plain_replay(tmp_path: Path) -> None:
    from loader.sources.archive import list_files, received_day
    from loader.warehouses.duckdb import DuckDBWarehouse
    from tests.helpers import sluice

    assert sluice("init", "demo", "--events", "3000", cwd=tmp_path).returncode == 0
    demo = tmp_path / "demo"
    days = sorted({received_day(f.url) for f in list_files(str(demo / "archive"))})
    first, last = days[0].isoformat(), days[-1].isoformat()
    plain = sluice("replay", "javascript_production", "--from", first, "--to", last, cwd=demo)
    assert plain.returncode == 0, plain.stderr
    wh = DuckDBWarehouse("d", str(demo / "sluice.duckdb"))
    try:
        before = content(wh, "javascript_production")
    finally:
        wh.close()
    (demo / "sluice.duckdb").unlink()
    staged = sluice(
        "replay", "javascript_production", "--from", first, "--to", last, "--workers", "2", cwd=demo
    )
    assert staged.returncode == 0, staged.stderr
    assert f"staged {len(days)} day(s) in 2 worker(s); the lock was held" in staged.stdout
    wh = DuckDBWarehouse("d", str(demo / "sluice.duckdb"))
    try:
        _same(before, content(wh, "javascript_production"))
    finally:
        wh.close()
    assert _staged_files(demo / ".sluice" / "staging") == []


def test_a_day_split_into_stages_commits_as_serial(open_wh, archive: str, tmp_path: Path) -> None:
    """A day too large for one worker is staged in parts of a few files, in order."""
    wh = open_wh()
    _serial(wh, archive, "serial")
    loader, area, orders = _planned(wh, archive, tmp_path, files_per_stage=2)
    assert [o.label for o in orders[:2]] == ["2026-11-01.0000", "2026-11-01.0001"]
    assert [f for o in orders for f in o.files] == sorted(f for o in orders for f in o.files)
    staged = [stage(o, loader.read_options(), area) for o in reversed(orders)][::-1]
    _commit_all(loader, archive, staged, area, _no_restage)
    _same(content(wh, "serial"), content(wh, "staged"))
    assert _staged_files(tmp_path / "staging") == []
