"""Benchmark: native mode against the Python path, into DuckDB, on the same archive.

    python bench/native_bench.py --events 1000000

Three runs, each in its own process: the Python path (reader processes parse, encode;
DuckDB appends), native mode (DuckDB parses the lines and runs the rules as SQL), and
DuckDB's own `read_ndjson_objects` of the same files into a table (what reading alone
costs the engine). CPU seconds per 10^6 events are split where they are spent: inside
the engine (DuckDB's statements, all its threads) and Sluice's own (everything else in
the loading process, plus the reader processes). Sluice's own is what a load costs the
machine it runs on when the engine is a remote warehouse. The archive is the one
bench/load_bench.py makes (loader.sources.sample, cached under bench/.cache/).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid
from pathlib import Path

from load_bench import archive_for

ROOT = Path(__file__).resolve().parent
CHILD = """
import json, resource, sys, time
from contextlib import contextmanager
from pathlib import Path
from loader.config.targets import DEFAULT_DUCKDB_MEMORY_LIMIT
from loader.native.loader import loader_class
from loader.warehouses.duckdb import DuckDBWarehouse
mode, where, archive, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])


def cpu():
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def children_cpu():
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return kids.ru_utime + kids.ru_stime


engine = [0.0]


class Timed(DuckDBWarehouse):
    # CPU spent inside DuckDB's statements (the calling thread and DuckDB's own).
    def fetchall(self, sql, params=None):
        start = cpu()
        try:
            return super().fetchall(sql, params)
        finally:
            engine[0] += cpu() - start

    @contextmanager
    def _begin(self):
        start = cpu()
        self.conn.execute("BEGIN TRANSACTION")
        engine[0] += cpu() - start
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        start = cpu()
        self.conn.execute("COMMIT")
        engine[0] += cpu() - start

    def native_lines(self, name, lines):
        start = cpu()
        try:
            return super().native_lines(name, lines)
        finally:
            engine[0] += cpu() - start


start_wall, start_cpu = time.time(), cpu()
if mode == "read_ndjson_objects":
    import duckdb
    files = sorted(str(p) for p in Path(archive).rglob("*.gz"))
    conn = duckdb.connect(where, config={"memory_limit": DEFAULT_DUCKDB_MEMORY_LIMIT})
    conn.execute(f"CREATE TABLE raw AS SELECT * FROM read_ndjson_objects({files})")
    rows = conn.execute("SELECT count(*) FROM raw").fetchone()[0]
    engine[0] = cpu() - start_cpu
else:
    wh = Timed("bench", where, DEFAULT_DUCKDB_MEMORY_LIMIT)
    report = loader_class(mode)(wh, batch_lines=batch).load(archive, "bench")
    rows = report.rows_loaded.get("tracks", 0)
    wh.close()
seconds = time.time() - start_wall
total = cpu() - start_cpu
print(json.dumps({
    "seconds": seconds,
    "engine_cpu_s": engine[0],
    "own_cpu_s": total - engine[0] + children_cpu(),
    "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "rows": rows,
}))
"""


def run(mode: str, archive: Path, batch: int) -> dict:
    db = ROOT / ".cache" / f"native-{uuid.uuid4().hex[:8]}.duckdb"
    try:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, mode, str(db), str(archive), str(batch)],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        for p in (db, Path(str(db) + ".wal")):
            p.unlink(missing_ok=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-lines", type=int, default=100_000)
    args = parser.parse_args()
    archive = archive_for(args.events)
    per_m = 1_000_000 / args.events
    results = []
    for mode in ("python", "native", "read_ndjson_objects"):
        r = run(mode, archive, args.batch_lines)
        results.append(
            {
                "mode": mode,
                "events": args.events,
                "wall_s": round(r["seconds"], 1),
                "events_per_s": round(args.events / r["seconds"]),
                "sluice_cpu_per_1m": round(r["own_cpu_s"] * per_m, 1),
                "engine_cpu_per_1m": round(r["engine_cpu_s"] * per_m, 1),
                "peak_rss_mb": round(r["rss_mb"]),
            }
        )
    python, native, baseline = results
    header = list(results[0])
    print(" | ".join(header))
    for r in results:
        print(" | ".join(str(r[h]) for h in header))
    print(
        f"Sluice's own CPU, Python path / native: "
        f"{python['sluice_cpu_per_1m'] / max(native['sluice_cpu_per_1m'], 0.01):.1f}x; "
        f"native events/s / read_ndjson_objects: "
        f"{100 * native['events_per_s'] / baseline['events_per_s']:.0f}%"
    )
    (ROOT / "native_results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
