"""Benchmark: events/s, peak RSS and no-op rerun time, for DuckDB and PostgreSQL (and
ClickHouse, embedded through chdb, with --warehouse clickhouse).

    python bench/load_bench.py --events 1000000 --warehouse both
    python bench/load_bench.py --events 200000 --warehouse clickhouse
    python bench/load_bench.py --events 200000 --tracking-plan   # plan's cost, both

Each load runs in its own process so its peak RSS is its own; its CPU seconds per 10^6
events are counted where they are spent: the loading process (with the embedded
engine's threads), the reader processes, and PostgreSQL's backend (read from /proc, so
only for a server on this machine). The archive is made
once by loader.sources.sample (mixed call types, ~30 event names, nested properties, ~2%
duplicates, some type conflicts) and cached under bench/.cache/. `--tracking-plan`
generates a plan of 50 events and 500 properties (the archive's events with their
properties and types, padded with planned events and properties it never sends) and
loads each warehouse without and then with it, in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent
CHILD = """
import json, resource, sys, time
from loader.sync.pipeline import Loader
from loader.rules.selective_sync import SyncFilter, load_file
from pathlib import Path
kind, where, archive, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rules = sys.argv[5] if len(sys.argv) > 5 else ""
plan_path = sys.argv[6] if len(sys.argv) > 6 else ""
f = load_file(Path(rules)).filter_for("bench", "bench") if rules else SyncFilter(None)
from loader.rules.tracking_plan import load_file as load_plan
plan = load_plan(Path(plan_path)) if plan_path else None
if kind == "postgres":
    from loader.warehouses.postgres import PostgresWarehouse as W
elif kind == "clickhouse":
    from loader.config.targets import ClickHouseTarget
    from loader.warehouses.clickhouse import ClickHouseWarehouse as W
    where = ClickHouseTarget(type="clickhouse", path=where)
else:
    from loader.warehouses.duckdb import DuckDBWarehouse as W
import os
from loader.config.targets import DEFAULT_DUCKDB_MEMORY_LIMIT
limit = os.environ.get("SLUICE_BENCH_DUCKDB_MEMORY_LIMIT", DEFAULT_DUCKDB_MEMORY_LIMIT)
wh = W("bench", where, limit) if kind == "duckdb" else W("bench", where)
loader = Loader(wh, batch_lines=batch, sync_filter=f, tracking_plan=plan)


def server_cpu():
    # The PostgreSQL backend serving this load, read from /proc (same machine); None
    # where it cannot be read. DuckDB's work is the loading process's own CPU.
    if kind != "postgres":
        return 0.0
    try:
        pid = wh.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


server_before = server_cpu()
t = time.perf_counter()
report = loader.load(archive, "bench")
seconds = time.perf_counter() - t
server_after = server_cpu()
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
wh.close()
print(json.dumps({"seconds": seconds, "lines": report.lines_read,
                  "loader_cpu_s": me.ru_utime + me.ru_stime,
                  "reader_cpu_s": kids.ru_utime + kids.ru_stime,
                  "server_cpu_s": None if server_before is None or server_after is None
                                  else server_after - server_before,
                  "rows": sum(report.rows_loaded.values()),
                  "violations": sum(report.violations.values()),
                  # reader processes counted at the largest one's peak: an upper bound
                  "rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                             + loader.readers
                             * resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024}))
"""


EVENTS_PER_FILE = 10_000


def archive_for(events: int, per_file: int = EVENTS_PER_FILE) -> Path:
    name = f"archive-{events}" if per_file == EVENTS_PER_FILE else f"archive-{events}-{per_file}"
    path = ROOT / ".cache" / name
    if not (path / ".done").exists():
        from loader.sources.sample import write_archive

        write_archive(path, events, events_per_file=per_file, malformed=False)
        (path / ".done").touch()
    return path


def write_plan(archive: Path, events: int = 50, properties: int = 500) -> Path:
    """A tracking plan of `events` events and `properties` properties in all: every
    event name of the archive's first file with its top-level properties typed by their
    first value (so most events conform, as in a real plan), padded with planned events
    and properties the archive never sends; violations are reported."""
    import gzip

    import orjson
    import yaml

    first = sorted(archive.rglob("*.gz"))[0]
    seen: dict[str, dict[str, str]] = {}
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string"}
    kinds |= {dict: "object", list: "array"}
    with gzip.open(first, "rb") as lines:
        for raw in lines:
            message = orjson.loads(raw)
            if message.get("type") != "track":
                continue
            props = seen.setdefault(str(message.get("event")), {})
            for key, value in (message.get("properties") or {}).items():
                if key not in props and value is not None:
                    props[key] = "number" if type(value) in (int, float) else kinds[type(value)]
    plan: dict[str, dict] = {}
    for name, props in list(seen.items())[:events]:
        plan[name] = {"properties": dict(props)}
    n = len(plan)
    while len(plan) < events:
        plan[f"Bench Planned {n}"] = {"properties": {}}
        n += 1
    total = sum(len(e["properties"]) for e in plan.values())
    names = list(plan)
    i = 0
    while total < properties:
        plan[names[i % len(names)]]["properties"][f"planned_{i}"] = "string"
        i += 1
        total += 1
    path = ROOT / ".cache" / f"plan-{archive.name}.yml"
    body = {"version": 1, "violations": "report", "events": plan}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def run_child(
    kind: str, where: str, archive: Path, batch: int, rules: Path | None, plan: Path | None = None
) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            kind,
            where,
            str(archive),
            str(batch),
            str(rules or ""),
            str(plan or ""),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _per_million(seconds: float | None, events: int) -> float | str:
    return "n/a" if seconds is None else round(seconds * 1_000_000 / events, 1)


def bench(
    kind: str,
    events: int,
    archive: Path,
    admin_dsn: str,
    batch: int,
    rules: Path | None = None,
    plan: Path | None = None,
) -> dict:
    """One fresh target: a first load and a no-op rerun (rules: a selective_sync.yml whose
    target and source are both named `bench`)."""
    if kind == "postgres":
        name = f"sluice_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        info = psycopg.conninfo.conninfo_to_dict(admin_dsn) | {"dbname": name}
        where = psycopg.conninfo.make_conninfo(**info)
    elif kind == "clickhouse":
        db = ROOT / ".cache" / f"bench-{uuid.uuid4().hex[:8]}.clickhouse"
        where = str(db)
    else:
        db = ROOT / ".cache" / f"bench-{uuid.uuid4().hex[:8]}.duckdb"
        where = str(db)
    try:
        first = run_child(kind, where, archive, batch, rules, plan)
        rerun = run_child(kind, where, archive, batch, rules, plan)
    finally:
        if kind == "postgres":
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        elif kind == "clickhouse":
            shutil.rmtree(db, ignore_errors=True)
        else:
            for p in (db, Path(str(db) + ".wal")):
                p.unlink(missing_ok=True)
    return {
        "warehouse": kind,
        "events": events,
        "first_load_s": round(first["seconds"], 2),
        "events_per_s": round(events / first["seconds"]),
        "peak_rss_mb": round(first["rss_mb"]),
        # CPU seconds per 10^6 events: the loading process (with DuckDB's or chdb's
        # engine inside it), the reader processes, and PostgreSQL's backend.
        "loader_cpu_per_1m": _per_million(first["loader_cpu_s"], events),
        "reader_cpu_per_1m": _per_million(first["reader_cpu_s"], events),
        "server_cpu_per_1m": _per_million(first["server_cpu_s"], events),
        "rerun_s": round(rerun["seconds"], 3),
        "rerun_pct": round(100 * rerun["seconds"] / first["seconds"], 2),
        "plan": "50 events / 500 properties" if plan else "none",
        "violations": first.get("violations", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument(
        "--warehouse", choices=["duckdb", "postgres", "clickhouse", "both"], default="both"
    )
    parser.add_argument(
        "--pg-dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    )
    parser.add_argument("--batch-lines", type=int, default=20_000)
    parser.add_argument(
        "--events-per-file",
        type=int,
        default=EVENTS_PER_FILE,
        help="lines per archive file (the cached archive's name says it when not the default)",
    )
    parser.add_argument(
        "--duckdb-memory-limit",
        help="DuckDB's memory_limit for the DuckDB loads (e.g. 256MB; default: a target's, 1GB)",
    )
    parser.add_argument(
        "--tracking-plan",
        action="store_true",
        help="load each warehouse without and with a 50-event, 500-property plan, "
        "alternating (see --rounds)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="with --tracking-plan: pairs of loads (without, with) per warehouse, in "
        "alternating order; the cost is the median of the pairs' differences",
    )
    args = parser.parse_args()
    if args.duckdb_memory_limit:
        os.environ["SLUICE_BENCH_DUCKDB_MEMORY_LIMIT"] = args.duckdb_memory_limit
    archive = archive_for(args.events, args.events_per_file)
    kinds = ["duckdb", "postgres"] if args.warehouse == "both" else [args.warehouse]
    results = []
    plan = write_plan(archive) if args.tracking_plan else None
    for k in kinds:
        if plan is None:
            results.append(bench(k, args.events, archive, args.pg_dsn, args.batch_lines))
            continue
        # Paired and alternating (without-with, then with-without...): a machine that
        # speeds up or slows down over the run moves both sides of a pair alike.
        costs = []
        for round_ in range(max(1, args.rounds)):
            order = [None, plan] if round_ % 2 == 0 else [plan, None]
            pair = {
                chosen is not None: bench(
                    k, args.events, archive, args.pg_dsn, args.batch_lines, plan=chosen
                )
                for chosen in order
            }
            base, planned = pair[False], pair[True]
            cost = 100 * (planned["first_load_s"] - base["first_load_s"]) / base["first_load_s"]
            costs.append(cost)
            base["plan_cost_pct"], planned["plan_cost_pct"] = 0.0, round(cost, 1)
            results += [base, planned]
        costs.sort()
        print(
            f"{k}: tracking plan cost per pair {[round(c, 1) for c in costs]} %, "
            f"median {costs[len(costs) // 2]:.1f} %"
        )
    header = list(results[-1])
    print(" | ".join(header))
    for r in results:
        print(" | ".join(str(r.get(h, "")) for h in header))
    (ROOT / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
