"""Benchmark: a backfill of daily partitions, serial against staged in parallel.

    python bench/backfill_bench.py --days 8 --events-per-day 250000 --warehouse both

Serial is `Loader.replay` of the whole range (reader processes, the lock held for the
whole run). Parallel is `run_backfill`: `--workers` processes stage the days, this
process commits them in day order, holding the lock only while it commits. Each run is
a fresh target in its own process. Printed per run: wall time, the seconds the lock
was held and their share of the wall time, and the events/s; then, from the parallel
run's figures, a 10^9-event day on 32 workers (the day split into stages of
`--files-per-stage` files): staging scales with workers, commits stay serial.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import uuid
from datetime import date, timedelta
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent
FIRST_DAY = date(2026, 1, 1)
CHILD = """
import json, resource, sys, time
from datetime import date
from loader.sync.pipeline import Loader
from loader.sync.backfill import run_backfill
from loader.sync.staging import StagingArea
kind, where, url, first, last, mode, workers, staging = sys.argv[1:9]
if kind == "postgres":
    from loader.warehouses.postgres import PostgresWarehouse
    wh = PostgresWarehouse("bench", where)
else:
    from loader.warehouses.duckdb import DuckDBWarehouse
    wh = DuckDBWarehouse("bench", where)
days = (date.fromisoformat(first), date.fromisoformat(last))
loader = Loader(wh)
t = time.perf_counter()
if mode == "serial":
    report = loader.replay(url, "bench", *days)
    locked = time.perf_counter() - t
else:
    report = run_backfill(loader, url, "bench", days, StagingArea(staging), int(workers))
    locked = report.staged["lock_held_s"]
seconds = time.perf_counter() - t
wh.close()
print(json.dumps({"seconds": seconds, "locked": locked, "lines": report.lines_read,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "stage_s": (report.staged or {}).get("stage_s", 0.0),
                  "partitions": (report.staged or {}).get("partitions", 0)}))
"""


def archive_for(days: int, per_day: int) -> Path:
    path = ROOT / ".cache" / f"backfill-{days}x{per_day}"
    if not (path / ".done").exists():
        from loader.sources.sample import write_archive

        files_per_day = max(1, per_day // 10_000)
        write_archive(
            path,
            days * per_day,
            files_per_day=files_per_day,
            events_per_file=10_000,
            malformed=False,
            first_day=FIRST_DAY,
        )
        (path / ".done").touch()
    return path


def run(kind: str, admin_dsn: str, archive: Path, days: int, mode: str, workers: int) -> dict:
    name = f"sluice_backfill_{uuid.uuid4().hex[:8]}"
    if kind == "postgres":
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        where = psycopg.conninfo.make_conninfo(
            **(psycopg.conninfo.conninfo_to_dict(admin_dsn) | {"dbname": name})
        )
    else:
        where = str(ROOT / ".cache" / f"{name}.duckdb")
    staging = ROOT / ".cache" / f"{name}-staging"
    last = FIRST_DAY + timedelta(days=days - 1)
    try:
        values = (kind, where, archive, FIRST_DAY, last, mode, workers, staging)
        out = subprocess.run(
            [sys.executable, "-c", CHILD, *(str(v) for v in values)],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if kind == "postgres":
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:
            for p in (Path(where), Path(where + ".wal")):
                p.unlink(missing_ok=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "warehouse": kind,
        "mode": mode if mode == "serial" else f"staged x{workers}",
        "events": result["lines"],
        "wall_s": round(result["seconds"], 1),
        "lock_held_s": round(result["locked"], 1),
        "lock_share_pct": round(100 * result["locked"] / result["seconds"], 1),
        "events_per_s": round(result["lines"] / result["seconds"]),
        "stage_cpu_s": round(result["stage_s"], 1),
        # The committing (or serial loading) process alone; stages run in others.
        "loader_rss_mb": round(result["rss_mb"]),
    }


def on_paper(staged: dict, workers: int = 32, events: int = 10**9) -> str:
    """A 10^9-event day from a parallel run's figures: stages at the measured seconds per
    event per worker spread over `workers`, commits at the measured commit rate, one
    after another (a commit overlaps the stages still running)."""
    stage_per_event = staged["stage_cpu_s"] / staged["events"]
    commit_per_event = staged["lock_held_s"] / staged["events"]
    stage_wall = events * stage_per_event / workers
    commit_wall = events * commit_per_event
    wall = max(stage_wall, commit_wall) + min(stage_wall, commit_wall) / workers
    return (
        f"{staged['warehouse']}: 10^9 events on {workers} workers: stages "
        f"{stage_wall / 3600:.1f} h of wall time, commits {commit_wall / 3600:.1f} h under the "
        f"lock, about {wall / 3600:.1f} h in all (commit-bound: "
        f"{events / commit_wall:,.0f} events/s is the ceiling)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--events-per-day", type=int, default=250_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warehouse", choices=["duckdb", "postgres", "both"], default="both")
    parser.add_argument(
        "--pg-dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    )
    parser.add_argument("--modes", default="serial,staged", help="serial, staged or both")
    args = parser.parse_args()
    archive = archive_for(args.days, args.events_per_day) / "segment-logs"
    kinds = ["duckdb", "postgres"] if args.warehouse == "both" else [args.warehouse]
    results = []
    for kind in kinds:
        for mode in args.modes.split(","):
            results.append(run(kind, args.pg_dsn, archive, args.days, mode, args.workers))
            print(json.dumps(results[-1]), flush=True)
    header = list(results[0])
    print(" | ".join(header))
    for r in results:
        print(" | ".join(str(r[h]) for h in header))
    for r in results:
        if r["mode"] != "serial":
            print(on_paper(r))
    (ROOT / "backfill_results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
