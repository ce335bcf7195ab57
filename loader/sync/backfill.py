"""A backfill of many received days on this machine: partitions staged by worker
processes, committed here one by one in archive order as soon as each one and all
before it are staged (`sluice replay --workers N`, bench/backfill_bench.py).

Dagster runs the same two steps as steps of its own executor (dagster_project.assets).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

from loader.sync.pipeline import Loader, SyncReport, recorded_run
from loader.sync.stage_worker import StageWorkers
from loader.sync.staging import (
    CommitClock,
    StageOrder,
    StagingArea,
    commit_in_order,
    plan_stages,
    progress_of,
)


def run_backfill(
    loader: Loader,
    url: str,
    schema: str,
    days: tuple[date, date],
    area: StagingArea,
    workers: int,
    replay: bool = True,
    on_committed: Callable[[StageOrder, CommitClock], None] | None = None,
    files_per_stage: int | None = None,
) -> SyncReport:
    """Load the received days `days` through staged partitions: `workers` processes stage
    them (no lock), this process commits them in day order (the lock held per commit
    only). The tables come out as a serial load of the same days would leave them."""
    with recorded_run(loader.warehouse, schema, url) as report:
        if replay:
            report.replay = {"from": days[0].isoformat(), "to": days[1].isoformat()}
        orders = plan_stages(loader, url, schema, days, replay, report, files_per_stage)
        loader.track(progress_of(orders))
        options = loader.read_options()
        pool = StageWorkers(min(workers, len(orders) or 1))
        try:
            futures = [pool.submit(order, options, area) for order in orders]
            staged = (future.result() for future in futures)
            commit_in_order(loader, url, staged, area, report, workers, on_committed)
        except BaseException:
            pool.stop()
            raise
        pool.close()
    return report
