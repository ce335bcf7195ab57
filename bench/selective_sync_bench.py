"""Benchmark: a sync with 90% of properties turned off vs the same sync with none off.

    python bench/selective_sync_bench.py --events 200000 --warehouse postgres

Selective sync is applied while rows are built, so turned-off columns cost neither
coercion nor staging nor the warehouse's insert. The rules file lists, per table, 90%
of the property columns a sample of the archive shows (core columns stay on).
"""

from __future__ import annotations

import argparse
import gzip
import json
from itertools import islice
from pathlib import Path

import orjson
import yaml
from load_bench import ROOT, archive_for, bench

from loader.rules.normalize import rows_for
from loader.rules.selective_sync import PROTECTED_COLUMNS


def property_columns(archive: Path, sample_lines: int = 20_000) -> dict[str, list[str]]:
    """{table: columns other than core columns} seen in the first lines of the archive."""
    seen: dict[str, set[str]] = {}
    first = sorted(archive.rglob("*.gz"))[0]
    with gzip.open(first) as lines:
        for line in islice(lines, sample_lines):
            for row in rows_for(orjson.loads(line)):
                seen.setdefault(row.table, set()).update(row.values)
    return {t: sorted(c - PROTECTED_COLUMNS) for t, c in seen.items()}


def rules_turning_off(columns: dict[str, list[str]], share: float, path: Path) -> int:
    """Write a deny-mode file turning off `share` of each table's columns; returns how many."""
    properties = {}
    for table, names in sorted(columns.items()):
        off = names[: round(len(names) * share)]
        if off:
            properties[table] = off
    text = {"version": 1, "targets": {"bench": {"bench": {"properties": properties}}}}
    path.write_text(yaml.safe_dump(text, sort_keys=False))
    return sum(len(v) for v in properties.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--warehouse", choices=["duckdb", "postgres"], default="postgres")
    parser.add_argument(
        "--pg-dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    )
    parser.add_argument("--share-off", type=float, default=0.9)
    parser.add_argument("--batch-lines", type=int, default=20_000)
    args = parser.parse_args()
    archive = archive_for(args.events)
    columns = property_columns(archive)
    rules = ROOT / ".cache" / "selective_sync_bench.yml"
    turned_off = rules_turning_off(columns, args.share_off, rules)
    total = sum(len(v) for v in columns.values())
    print(f"turning off {turned_off} of {total} property columns ({rules})")
    results = []
    for label, path in (("everything synced", None), (f"{args.share_off:.0%} off", rules)):
        r = bench(args.warehouse, args.events, archive, args.pg_dsn, args.batch_lines, path)
        results.append({"run": label, **r})
    header = list(results[0])
    print(" | ".join(header))
    for r in results:
        print(" | ".join(str(r[h]) for h in header))
    speedup = results[0]["first_load_s"] / results[1]["first_load_s"]
    print(f"speed-up with {args.share_off:.0%} of properties off: {speedup:.2f}x")
    (ROOT / "selective_sync_results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
