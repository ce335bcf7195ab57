"""Plan and run one model: stage + diff in the warehouse, send the change set in
batches, advance the snapshot for what the destination accepted, record a report.

At least once, with ids a receiver can deduplicate on: a record's snapshot row is
written in the step that follows its acceptance, so a record that failed (or was never
reached) is in the next run's change set and one that was accepted is not. A batch the
destination applied but did not acknowledge (a client timeout, a crash before the
snapshot commit) is sent again, by the retries and by the next run, always with the same
record ids: each batch's ids are recorded in the warehouse before it is sent
(loader/reverse_etl/ids.py), and a later change of the same key never reuses one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from loader.reverse_etl.destinations import (
    Destination,
    DestinationContext,
    DestinationError,
    Record,
)
from loader.reverse_etl.diff import ChangeSet, pages, prepare
from loader.reverse_etl.model import Model
from loader.warehouses.warehouse import Warehouse

MAX_FAILURES_KEPT = 20


@dataclass
class RetlReport:
    """What a run did; stored as JSON in _sluice.retl_runs and printed by the CLI."""

    run_id: str
    model: str
    target: str
    mode: str
    destination: str
    started_at: str
    status: str = "running"  # success | partial (some records failed) | failed
    finished_at: str | None = None
    duration_s: float = 0.0
    staged: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    to_send: int = 0
    baseline: int = 0
    sent: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    unsent: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Plan:
    changes: ChangeSet
    sample: list[Record]
    destination: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def plan_model(warehouse: Warehouse, model: Model, sample_size: int = 5) -> Plan:
    """Counts and a sample of what `run_model` would send. Sends nothing, needs no
    secret, and leaves the snapshot as it is (staging tables are dropped)."""
    destination = make_destination(model, warehouse, run_id="plan").describe()
    warehouse.ensure_bookkeeping()
    warehouse.retl_ensure_bookkeeping()
    with warehouse.retl_lock(model.name):
        try:
            changes = prepare(warehouse, model)
            sample = next(iter(pages(warehouse, changes, sample_size, "plan", sample_size)), [])
        finally:
            warehouse.retl_drop_stage(model.name)
    return Plan(changes, sample, destination)


def make_destination(
    model: Model,
    warehouse: Warehouse,
    run_id: str,
    open_target: Callable[[str], Warehouse] | None = None,
) -> Destination:
    """The model's destination; its field names and types are filled in by `prepare`."""
    ctx = DestinationContext(
        model=model.name,
        run_id=run_id,
        warehouse=warehouse,
        key_field=model.key,
        field_types={},
        open_target=open_target,
    )
    return model.destination_class(model.destination, ctx)


def run_model(
    warehouse: Warehouse,
    model: Model,
    open_target: Callable[[str], Warehouse] | None = None,
    on_start: Callable[[RetlReport], None] | None = None,
    on_batch: Callable[[RetlReport, int], None] | None = None,
) -> RetlReport:
    """Send the model's change set; returns the report (also stored in _sluice).

    Configuration problems (ModelError, a missing secret) and a busy lock raise before
    anything is sent. A destination that refuses everything (DestinationError) ends the
    run with status `failed`; any other exception is recorded in the report, then
    re-raised."""
    warehouse.ensure_bookkeeping()
    warehouse.retl_ensure_bookkeeping()
    run_id = uuid.uuid4().hex
    clock = time.monotonic()
    started = _now()
    destination = make_destination(model, warehouse, run_id, open_target)
    destination.open()  # secrets and clients first: a missing env var costs no staging
    unexpected: Exception | None = None
    try:
        with warehouse.retl_lock(model.name):
            try:
                changes = prepare(warehouse, model)
                destination.ctx.key_field = changes.key_field
                destination.ctx.field_types = changes.field_types
                report = RetlReport(
                    run_id=run_id,
                    model=model.name,
                    target=warehouse.target_name,
                    mode=model.mode,
                    destination=destination.describe(),
                    started_at=started,
                    staged=changes.staged,
                    counts=dict(changes.counts),
                    to_send=changes.to_send,
                    sent={k: 0 for k in model.send_kinds},
                )
                if on_start:
                    on_start(report)
                try:
                    _send_all(warehouse, changes, destination, report, on_batch)
                except Exception as exc:  # noqa: BLE001 - recorded, then re-raised below
                    report.error = destination.scrub(f"{type(exc).__name__}: {_first_line(exc)}")
                    report.status = "failed"
                    unexpected = exc
            finally:
                warehouse.retl_drop_stage(model.name)
    finally:
        destination.close()
    report.finished_at = _now()
    report.duration_s = round(time.monotonic() - clock, 3)
    warehouse.retl_record_run(report.to_dict())
    if unexpected is not None:
        raise unexpected
    return report


def _send_all(
    warehouse: Warehouse,
    changes: ChangeSet,
    destination: Destination,
    report: RetlReport,
    on_batch: Callable[[RetlReport, int], None] | None,
) -> None:
    model = changes.model
    report.baseline = warehouse.retl_baseline(model.name, model.baseline_kinds)
    done = 0
    try:
        ids = destination.delivers_ids
        for batch in pages(
            warehouse, changes, destination.batch_size, report.run_id, known_ids=ids
        ):
            new = [(r.key, r.op, r.row_hash, r.id) for r in batch if r.new_id and ids]
            if new:  # committed before sending: a re-send after a lost answer keeps its ids
                warehouse.retl_note_sent(model.name, report.run_id, new)
            result = destination.send(batch)
            accepted = [r for r in batch if r.seq not in result.failed]
            warehouse.retl_advance(model.name, [r.seq for r in accepted])
            for record in accepted:
                report.sent[record.kind] += 1
            for record in batch:
                if record.seq in result.failed:
                    report.failed += 1
                    if len(report.failures) < MAX_FAILURES_KEPT:
                        reason = destination.scrub(result.failed[record.seq])
                        report.failures.append(
                            {"key": record.key, "op": record.op, "reason": reason}
                        )
            done += len(batch)
            if on_batch:
                on_batch(report, done)
            if result.stop:
                report.error = destination.scrub(result.stop)
                break
    except DestinationError as exc:
        report.error = destination.scrub(str(exc))
    finally:
        report.unsent = report.to_send - done
        if report.error:
            report.status = "failed"
        elif report.failed:
            report.status = "partial"
        else:
            report.status = "success"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
