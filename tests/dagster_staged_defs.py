"""Definitions for the staged-backfill tests, rebuilt in every step process of the
multiprocess executor: the project folder is $SLUICE_STAGED_ROOT.

$SLUICE_STAGED_SLEEP (seconds) makes each stage step last at least that long, so the
test can see stage steps of different days run at the same time."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg

import dagster_project.assets as assets
from dagster_project.definitions import build_definitions
from loader.sync.project import load_project

JOB = "staged_backfill"

_stage = assets.stage


def _slow_stage(*args, **kwargs):  # type: ignore[no-untyped-def]
    started = time.monotonic()
    staged = _stage(*args, **kwargs)
    time.sleep(
        max(0.0, float(os.environ.get("SLUICE_STAGED_SLEEP", "0")) - (time.monotonic() - started))
    )
    return staged


if os.environ.get("SLUICE_STAGED_SLEEP"):
    assets.stage = _slow_stage


def _defs() -> dg.Definitions:
    project = load_project(Path(os.environ["SLUICE_STAGED_ROOT"]) / "sluice.yml")
    defs = build_definitions(project)
    sync = next(
        a
        for a in defs.assets
        if isinstance(a, dg.AssetsDefinition) and a.node_def.name.startswith("sync__")
    )
    job = dg.define_asset_job(
        JOB,
        selection=dg.AssetSelection.assets(sync),
        executor_def=dg.multiprocess_executor.configured({"max_concurrent": 4}),
    )
    return dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))


def staged_job() -> dg.JobDefinition:
    """Module level, for dg.reconstructable()."""
    return _defs().resolve_job_def(JOB)
