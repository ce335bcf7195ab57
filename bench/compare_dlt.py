"""Benchmark: Sluice against dlt on the same archive, and PostgreSQL's own COPY ceiling.

    python bench/compare_dlt.py --events 100000 --rounds 2

Needs the `bench` extra (`pip install -e ".[bench]"`, which brings `dlt[postgres]`).

One archive is generated (bench/load_bench.py's generator, cached under bench/.cache/)
and loaded, alternately, by Sluice and by a dlt pipeline into fresh schemas of one
scratch database created on the server of `--pg-dsn` (dropped at the end unless
`--keep-db`). Alternating rounds (sluice, dlt, sluice, dlt, ...) spread any drift of the
machine (page cache, autovacuum, CPU boost) over both tools instead of one. Each load runs
in its own process so its peak RSS (ru_maxrss, plus its worker processes, each counted at the
largest worker's peak, an upper bound) is its own.

dlt gets a fair, idiomatic setup: a resource that streams the gzip NDJSON lines with
orjson and yields pages of dicts marked with a Segment-style table name (`tracks` plus one
table per event, `pages`, `screens`, `identifies`, `groups`, `aliases`), merge disposition
with `messageId` as primary key, nested objects flattened by dlt's own normaliser, default
settings otherwise except `normalize(workers=2)` (dlt's documented way to use more cores;
`--dlt-workers`) and telemetry off (it would only add network calls).

Both loads must produce the same number of distinct messages per table, or the comparison
would not be of equal work: the script prints the per-table counts and exits 1 if any
differ.

The ceiling is what PostgreSQL itself can ingest: Sluice's final tables are exported to
CSV files first (not timed), then `COPY table FROM STDIN` of those files into empty tables
of identical structure (`LIKE ... INCLUDING ALL`, so with the same primary keys) in a fresh
schema is timed. No loader can beat it on this server.

Results go to bench/compare_results.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import psycopg
from load_bench import ROOT, archive_for

from loader.rules.normalize import event_table_name

DEFAULT_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
RESULTS = ROOT / "compare_results.json"
# Segment's table per non-track call type (tracks also go to one table per event name).
KIND_TABLES = {
    "page": "pages",
    "screen": "screens",
    "identify": "identifies",
    "group": "groups",
    "alias": "aliases",
}
# Sluice-only tables built from identifies/groups; dlt has no equivalent, so they are
# not part of the row-count check (they are extra work on Sluice's side).
PROFILE_TABLES = {"users", "accounts"}
COPY_CHUNK = 1 << 20


# --- children: one load per process --------------------------------------------------


def _peak_rss_mb() -> tuple[float, float]:
    """(this process, its largest waited-for child) peak RSS in MB (Linux: KB units)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, kids


def child_sluice(dsn: str, archive: str, schema: str, batch: int) -> dict[str, Any]:
    """Exactly what load_bench.py's CHILD does, but into a named schema, so that several
    loads can share one database."""
    from loader.sync.pipeline import Loader
    from loader.warehouses.postgres import PostgresWarehouse

    wh = PostgresWarehouse("bench", dsn)
    loader = Loader(wh, batch_lines=batch)
    started = time.perf_counter()
    report = loader.load(archive, schema)
    seconds = time.perf_counter() - started
    wh.close()
    own, kids = _peak_rss_mb()
    return {
        "seconds": seconds,
        "lines": report.lines_read,
        "rows": sum(report.rows_loaded.values()),
        "rss_mb": own,
        "workers_rss_mb": kids,
        "workers": loader.readers,
    }


def segment_pages(files: list[Path]) -> Iterator[Any]:
    """dlt resource body: per file, the messages grouped by Segment table, each group
    yielded as one page marked with its table name (dlt recommends yielding pages rather
    than single items). A track message goes to `tracks` without its properties, as
    Segment's (and Sluice's) `tracks` table holds no properties, and whole to its event
    table."""
    import dlt

    for path in files:
        groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
        with gzip.open(path, "rb") as lines:
            for line in lines:
                msg = orjson.loads(line)
                kind = str(msg["type"]).lower()
                if kind == "track":
                    groups["tracks"].append({k: v for k, v in msg.items() if k != "properties"})
                    groups[event_table_name(str(msg["event"]))].append(msg)
                else:
                    groups[KIND_TABLES[kind]].append(msg)
        for table, items in groups.items():
            yield dlt.mark.with_table_name(items, table)


def child_dlt(
    dsn: str, archive: str, dataset: str, workers: int, pipelines_dir: str
) -> dict[str, Any]:
    """One dlt pipeline run (extract, normalize, load), timed as a whole; state and
    intermediate files stay in `pipelines_dir` (a temp dir)."""
    import dlt

    files = sorted(Path(archive).rglob("*.gz"))
    started = time.perf_counter()
    pipeline = dlt.pipeline(
        pipeline_name=f"compare_{dataset}",
        pipelines_dir=pipelines_dir,
        destination=dlt.destinations.postgres(credentials=dsn_to_url(dsn)),
        dataset_name=dataset,
    )
    source = dlt.resource(
        segment_pages(files),
        name="segment",
        write_disposition="merge",
        primary_key="messageId",
    )
    t0 = time.perf_counter()
    pipeline.extract(source)
    t1 = time.perf_counter()
    pipeline.normalize(workers=workers)
    t2 = time.perf_counter()
    info = pipeline.load()
    t3 = time.perf_counter()
    info.raise_on_failed_jobs()
    own, kids = _peak_rss_mb()
    return {
        "seconds": t3 - started,
        "extract_s": t1 - t0,
        "normalize_s": t2 - t1,
        "load_s": t3 - t2,
        "files": len(files),
        "rss_mb": own,
        "workers_rss_mb": kids,
        "workers": workers,
    }


def dsn_to_url(dsn: str) -> str:
    """libpq key=value DSN -> the postgresql:// URL dlt's credentials take.

    dlt insists on a password even when the server trusts the client; libpq only sends it
    when the server asks, so a placeholder stands in when neither the DSN nor $PGPASSWORD
    gives one.
    """
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    user = quote(str(info.get("user", "postgres")), safe="")
    password = info.get("password") or os.environ.get("PGPASSWORD") or "unused"
    auth = f"{user}:{quote(str(password), safe='')}"
    host = info.get("host", "localhost")
    port = info.get("port", 5432)
    return f"postgresql://{auth}@{host}:{port}/{quote(str(info.get('dbname', user)), safe='')}"


def run_in_child(*args: str, cwd: Path | None = None) -> dict[str, Any]:
    """Run this script's child mode in a fresh interpreter; its last stdout line is JSON."""
    env = dict(os.environ, RUNTIME__DLTHUB_TELEMETRY="false")
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "_child", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )
    if out.returncode != 0:
        sys.stderr.write(out.stdout[-4000:] + out.stderr[-4000:])
        raise SystemExit(f"child {args[0]} failed with exit code {out.returncode}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- verification and ceiling (parent) -----------------------------------------------


def tables_of(conn: psycopg.Connection, schema: str) -> list[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = %s AND table_type = 'BASE TABLE' ORDER BY 1",
        (schema,),
    ).fetchall()
    return [r[0] for r in rows]


def distinct_counts(conn: psycopg.Connection, schema: str, tables: list[str], column: str) -> dict:
    return {
        t: conn.execute(f'SELECT count(DISTINCT "{column}") FROM "{schema}"."{t}"').fetchone()[0]
        for t in tables
    }


def verify(conn: psycopg.Connection, sluice_schema: str, dlt_dataset: str) -> list[dict]:
    """Per Segment table: distinct message ids in Sluice's schema and in dlt's dataset.
    dlt's own tables (`_dlt_*`) and its child tables of nested lists (`a__b`) are not
    Segment tables; neither are Sluice's users/accounts."""
    s_tables = [t for t in tables_of(conn, sluice_schema) if t not in PROFILE_TABLES]
    d_tables = [
        t for t in tables_of(conn, dlt_dataset) if not t.startswith("_dlt") and "__" not in t
    ]
    s = distinct_counts(conn, sluice_schema, s_tables, "id")
    d = distinct_counts(conn, dlt_dataset, d_tables, "message_id")
    return [
        {"table": t, "sluice": s.get(t), "dlt": d.get(t), "equal": s.get(t) == d.get(t)}
        for t in sorted(set(s) | set(d))
    ]


def export_csv(conn: psycopg.Connection, schema: str, out_dir: Path) -> dict[str, int]:
    """Sluice's final tables as CSV files (the ceiling's input); returns rows per table."""
    rows: dict[str, int] = {}
    for table in tables_of(conn, schema):
        path = out_dir / f"{table}.csv"
        with path.open("wb") as fh, conn.cursor() as cur:
            with cur.copy(f'COPY "{schema}"."{table}" TO STDOUT (FORMAT csv)') as copy:
                for data in copy:
                    fh.write(data)
        rows[table] = conn.execute(f'SELECT count(*) FROM "{schema}"."{table}"').fetchone()[0]
    return rows


def ceiling(dsn: str, source_schema: str, csv_dir: Path, tables: list[str]) -> float:
    """Seconds for `COPY ... FROM STDIN` of the CSV files into empty tables shaped like
    Sluice's (same columns, types, primary key) in a fresh schema, in one transaction."""
    schema = f"ceiling_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        for t in tables:
            conn.execute(
                f'CREATE TABLE "{schema}"."{t}" (LIKE "{source_schema}"."{t}" INCLUDING ALL)'
            )
        conn.commit()
        started = time.perf_counter()
        with conn.cursor() as cur:
            for t in tables:
                with (csv_dir / f"{t}.csv").open("rb") as fh:
                    with cur.copy(f'COPY "{schema}"."{t}" FROM STDIN (FORMAT csv)') as copy:
                        while data := fh.read(COPY_CHUNK):
                            copy.write(data)
        conn.commit()
        seconds = time.perf_counter() - started
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        conn.commit()
    return seconds


# --- orchestration -------------------------------------------------------------------


def summarize(events: int, runs: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = [r["seconds"] for r in runs]
    # Every worker counted at the largest worker's peak: an upper bound of the total.
    rss = [r["rss_mb"] + max(1, r["workers"]) * r["workers_rss_mb"] for r in runs]
    return {
        "best_s": round(min(seconds), 2),
        "median_s": round(statistics.median(seconds), 2),
        "events_per_s_best": round(events / min(seconds)),
        "events_per_s_median": round(events / statistics.median(seconds)),
        "peak_rss_mb": round(max(rss)),
        "main_rss_mb": round(max(r["rss_mb"] for r in runs)),
        "workers_rss_mb": round(max(r["workers_rss_mb"] for r in runs)),
        "workers": max(max(1, r["workers"]) for r in runs),
    }


def compare(args: argparse.Namespace) -> int:
    archive = archive_for(args.events)
    db = f"sluice_compare_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.pg_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db}"')
    dsn = psycopg.conninfo.make_conninfo(args.pg_dsn, dbname=db)
    runs: dict[str, list[dict[str, Any]]] = {"sluice": [], "dlt": []}
    checks: list[dict[str, Any]] = []
    ceilings: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="compare_dlt_") as tmp:
            work = Path(tmp)
            for r in range(1, args.rounds + 1):
                schema, dataset = f"sluice_r{r}", f"dlt_r{r}"
                s = run_in_child("sluice", dsn, str(archive), schema, str(args.batch_lines))
                runs["sluice"].append(s)
                print(f"round {r}: sluice {s['seconds']:.1f} s", flush=True)
                pipelines = work / f"pipelines_{r}"
                d = run_in_child(
                    "dlt",
                    dsn,
                    str(archive),
                    dataset,
                    str(args.dlt_workers),
                    str(pipelines),
                    cwd=work,
                )
                runs["dlt"].append(d)
                print(
                    f"round {r}: dlt {d['seconds']:.1f} s (extract {d['extract_s']:.1f},"
                    f" normalize {d['normalize_s']:.1f}, load {d['load_s']:.1f})",
                    flush=True,
                )
                with psycopg.connect(dsn, autocommit=True) as conn:
                    checks.append({"round": r, "tables": verify(conn, schema, dataset)})
            with psycopg.connect(dsn, autocommit=True) as conn:
                csv_dir = work / "csv"
                csv_dir.mkdir()
                rows = export_csv(conn, "sluice_r1", csv_dir)
            for _ in range(args.rounds):
                ceilings.append(ceiling(dsn, "sluice_r1", csv_dir, sorted(rows)))
            csv_mb = sum(p.stat().st_size for p in csv_dir.iterdir()) / 2**20
    finally:
        if args.keep_db:
            print(f"kept database {db}")
        else:
            with psycopg.connect(args.pg_dsn, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    events = args.events
    sluice, dlt_ = summarize(events, runs["sluice"]), summarize(events, runs["dlt"])
    total_rows = sum(rows.values())
    best_copy = min(ceilings)
    ceil = {
        "rows": total_rows,
        "csv_mb": round(csv_mb, 1),
        "best_s": round(best_copy, 2),
        "median_s": round(statistics.median(ceilings), 2),
        "rows_per_s": round(total_rows / best_copy),
        "events_per_s": round(events / best_copy),
    }
    ok = all(t["equal"] for c in checks for t in c["tables"])
    result = {
        "events": events,
        "archive": str(archive),
        "rounds": args.rounds,
        "sluice_batch_lines": args.batch_lines,
        "dlt_normalize_workers": args.dlt_workers,
        "sluice": sluice,
        "dlt": dlt_,
        "ratio_sluice_over_dlt_median": round(
            sluice["events_per_s_median"] / dlt_["events_per_s_median"], 2
        ),
        "ratio_sluice_over_dlt_best": round(
            sluice["events_per_s_best"] / dlt_["events_per_s_best"], 2
        ),
        "ceiling_copy": ceil,
        "runs": runs,
        "verification": checks,
        "verified": ok,
    }
    RESULTS.write_text(json.dumps(result, indent=2))
    report(result)
    if not ok:
        print("FAILED: Sluice and dlt loaded different distinct rows per table", file=sys.stderr)
        return 1
    return 0


def report(result: dict[str, Any]) -> None:
    events, s, d, c = result["events"], result["sluice"], result["dlt"], result["ceiling_copy"]
    print()
    print(
        f"{events:,} events, {result['rounds']} alternating rounds; dlt normalize workers ="
        f" {result['dlt_normalize_workers']} (pipeline.normalize(workers=...))"
    )
    print(f"{'loader':<14}{'median s':>10}{'events/s':>10}{'best ev/s':>11}  peak RSS MB")
    for name, m in (("sluice", s), ("dlt", d)):
        rss = f"{m['peak_rss_mb']}"
        if m["workers_rss_mb"] > 1:
            rss += f" (main {m['main_rss_mb']} + {m['workers']} x worker {m['workers_rss_mb']})"
        print(
            f"{name:<14}{m['median_s']:>10}{m['events_per_s_median']:>10,}"
            f"{m['events_per_s_best']:>11,}  {rss}"
        )
    print(
        f"{'COPY ceiling':<14}{c['median_s']:>10}{c['events_per_s']:>10,}{'':>11}"
        f"  ({c['rows']:,} rows, {c['rows_per_s']:,} rows/s best, {c['csv_mb']} MB CSV)"
    )
    print(
        f"ratio sluice/dlt (events/s): median {result['ratio_sluice_over_dlt_median']}x,"
        f" best {result['ratio_sluice_over_dlt_best']}x"
    )
    print()
    print("distinct message ids per table (last round):")
    last = result["verification"][-1]["tables"]
    for t in last:
        mark = "ok" if t["equal"] else "MISMATCH"
        print(f"  {t['table']:<28}{t['sluice']!s:>9}{t['dlt']!s:>9}  {mark}")
    bad = [
        (c["round"], t["table"])
        for c in result["verification"]
        for t in c["tables"]
        if not t["equal"]
    ]
    print("verification:", "all tables equal in every round" if not bad else f"mismatches {bad}")
    print(f"results written to {RESULTS}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "sluice":
            dsn, archive, schema, batch = rest
            out = child_sluice(dsn, archive, schema, int(batch))
        else:
            dsn, archive, dataset, workers, pipelines_dir = rest
            out = child_dlt(dsn, archive, dataset, int(workers), pipelines_dir)
        print(json.dumps(out))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--pg-dsn", default=DEFAULT_DSN)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-lines", type=int, default=20_000, help="Sluice batch size")
    parser.add_argument("--dlt-workers", type=int, default=2, help="dlt normalize worker processes")
    parser.add_argument("--keep-db", action="store_true", help="keep the scratch database")
    sys.exit(compare(parser.parse_args()))


if __name__ == "__main__":
    main()
