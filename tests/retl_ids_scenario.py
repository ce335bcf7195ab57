"""Record ids over a model's life, on any warehouse: each change sent gets an id of its
own (a row back to an earlier state, a row deleted and re-created as it was), and a
re-send of a change that was not acknowledged keeps its id. Run by the reverse-ETL tests
(DuckDB, PostgreSQL) and by each emulated warehouse's tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from loader.reverse_etl.model import load_model
from loader.reverse_etl.runner import run_model
from loader.rules.schema import ColumnType

TS = "2026-11-01T10:00:00+00:00"


def ids_scenario(wh: Any, tmp_path: Path, receiver: Any) -> None:
    """`receiver` is tests.test_reverse_etl.Receiver (a loopback HTTP server)."""
    wh.ensure_bookkeeping()
    cols = {"id": ColumnType.TEXT, "n": ColumnType.BIGINT, "received_at": ColumnType.TIMESTAMP}
    wh.create_table("src", "people", cols)

    def put(*rows: tuple[str, int]) -> None:
        with wh.transaction():
            wh.upsert_rows(
                "src", "people", ("id", "n", "received_at"), [(i, n, TS) for i, n in rows]
            )

    models = tmp_path / "ids_models"
    models.mkdir()
    (models / "people.sql").write_text("SELECT id, n FROM {{ schema }}.people WHERE n >= 0")
    spec = {
        "key": "id",
        "mode": "mirror",
        "schema": "src",
        "destination": {
            "type": "webhook",
            "url": f"{receiver.url}/hook",
            "max_attempts": 2,
            "backoff_seconds": 0.01,
        },
    }
    (models / "people.yml").write_text(yaml.safe_dump(spec))
    model = load_model(models, "people")

    def run() -> dict[str, str]:
        """key -> id of what this run had accepted."""
        before = len(receiver.accepted())
        report = run_model(wh, model)
        assert report.status == "success", report.error
        return {r["key"]: r["id"] for r in receiver.accepted()[before:]}

    put(("a", 1), ("b", 2))
    first = run()
    put(("a", 5))
    second = run()
    put(("a", 1))  # back to the state of the first run
    third = run()
    put(("b", -1))  # leaves the model: deleted at the receiver
    fourth = run()
    put(("b", 2))  # re-created as it was
    fifth = run()
    assert [sorted(r) for r in (first, second, third, fourth, fifth)] == [
        ["a", "b"],
        ["a"],
        ["a"],
        ["b"],
        ["b"],
    ]
    sent = [*first.values(), second["a"], third["a"], fourth["b"], fifth["b"]]
    assert len(set(sent)) == len(sent), "an id was given to two different changes"

    # The receiver applies the change but its answer fails: the next run re-sends the
    # change with the same id; a later change of the key gets a new one.
    put(("a", 7))
    receiver.script = [(500, {}, "applied, but the answer was lost")] * 2
    failed = run_model(wh, model)
    assert failed.status == "partial" and failed.failed == 1
    attempts = [r["body"]["records"][0]["id"] for r in receiver.requests[-2:]]
    resent = run()
    assert resent == {"a": attempts[0]} and attempts[0] == attempts[1]
    put(("a", 8))
    assert run()["a"] not in set(sent) | {attempts[0]}
