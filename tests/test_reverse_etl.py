"""Reverse ETL end to end: models diffed in the warehouse, delivered to real loopback HTTP
servers (that fail, rate-limit and record), tables and files; on DuckDB and PostgreSQL."""

from __future__ import annotations

import base64
import csv
import io
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from loader.config.errors import ConfigError
from loader.reverse_etl.model import ModelError, load_model
from loader.reverse_etl.runner import RetlReport, plan_model, run_model
from loader.sync.pipeline import Loader

REPO_MODELS = Path(__file__).resolve().parent.parent / "sql" / "models"
SECRET = "Bearer s3cr3t-token-do-not-log"


# --- a real HTTP receiver on loopback -------------------------------------------------
Reply = tuple[int, dict[str, str], str]


class Receiver:
    """Records every request; answers from a script (one reply per request) or a rule."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[Reply] = []
        self.rule: Callable[[dict[str, Any], dict[str, str]], Reply | None] | None = None
        self.delays: list[float] = []  # seconds to wait before answering, one per request
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    reply = receiver.script.pop(0) if receiver.script else None
                    if reply is None and receiver.rule is not None:
                        reply = receiver.rule(body, headers)
                    status, extra, text = reply or (200, {}, '{"success": true}')
                    receiver.requests.append(
                        {"path": self.path, "headers": headers, "body": body, "status": status}
                    )
                    delay = receiver.delays.pop(0) if receiver.delays else 0.0
                time.sleep(delay)  # applied, but the client may have given up by now
                data = text.encode()
                try:
                    self.send_response(status)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def accepted(self) -> list[dict[str, Any]]:
        """Records (webhook) or messages (Segment) of requests answered 2xx."""
        out = []
        for r in self.requests:
            if 200 <= r["status"] < 300:
                out.extend(r["body"].get("records") or r["body"].get("batch") or [])
        return out

    def clear(self) -> None:
        self.requests.clear()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.server.shutdown()
    rec.server.server_close()


# --- a small source table the tests change between runs --------------------------------
def sql(wh: Any, *statements: str) -> None:
    for statement in statements:
        wh.conn.execute(statement)


def make_customers(wh: Any, n: int) -> None:
    sql(
        wh,
        "CREATE SCHEMA src",
        "CREATE TABLE src.customers (id text PRIMARY KEY, name text, plan text, score bigint)",
    )
    values = ", ".join(f"('c{i:02d}', 'Customer {i}', 'free', {i})" for i in range(1, n + 1))
    sql(wh, f"INSERT INTO src.customers VALUES {values}")


def write_model(
    models: Path, destination: dict[str, Any], mode: str = "upsert", **extra: Any
) -> Path:
    models.mkdir(parents=True, exist_ok=True)
    (models / "customers.sql").write_text(
        "-- customers, one row each\n"
        "SELECT id AS customer_id, name, plan, score\nFROM {{ schema }}.customers\n"
    )
    spec = {"key": "customer_id", "mode": mode, "schema": "src", "destination": destination}
    (models / "customers.yml").write_text(yaml.safe_dump({**spec, **extra}, sort_keys=False))
    return models


def webhook(receiver: Receiver, **settings: Any) -> dict[str, Any]:
    return {
        "type": "webhook",
        "url": f"{receiver.url}/hook",
        "auth_env": "RETL_TEST_TOKEN",
        "batch_size": 10,
        "max_attempts": 4,
        "backoff_seconds": 0.01,
        **settings,
    }


def run(wh: Any, models: Path, name: str = "customers", **kwargs: Any) -> RetlReport:
    return run_model(wh, load_model(models, name), **kwargs)


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETL_TEST_TOKEN", SECRET)


def assert_exactly_once(receiver: Receiver) -> None:
    ids = Counter(r["id"] for r in receiver.accepted())
    assert ids and max(ids.values()) == 1, [i for i, n in ids.items() if n > 1]


# --- webhook: retries, exactly once ---------------------------------------------------
def test_webhook_retries_500_and_429_and_delivers_each_change_once(
    open_wh, receiver: Receiver, tmp_path: Path
) -> None:
    wh = open_wh()
    make_customers(wh, 25)
    models = write_model(tmp_path / "models", webhook(receiver))
    receiver.script = [(500, {}, "boom"), (429, {"Retry-After": "0"}, "slow down")]

    first = run(wh, models)
    assert first.status == "success" and first.sent == {"added": 25, "changed": 0}
    assert [r["status"] for r in receiver.requests] == [500, 429, 200, 200, 200]
    assert sorted(r["key"] for r in receiver.accepted()) == [f"c{i:02d}" for i in range(1, 26)]
    assert {r["op"] for r in receiver.accepted()} == {"upsert"}
    hook = receiver.requests[-1]
    assert hook["path"] == "/hook" and hook["headers"]["authorization"] == SECRET
    assert hook["body"]["model"] == "customers"
    assert receiver.accepted()[0]["fields"] == {
        "customer_id": "c01",
        "name": "Customer 1",
        "plan": "free",
        "score": 1,
    }
    assert wh.retl_snapshot_count("customers") == 25

    receiver.clear()
    again = run(wh, models)
    assert again.status == "success" and again.counts["unchanged"] == 25
    assert receiver.requests == [] and sum(again.sent.values()) == 0

    sql(
        wh,
        "UPDATE src.customers SET plan = 'pro' WHERE id IN ('c03', 'c04')",
        "DELETE FROM src.customers WHERE id = 'c05'",
        "INSERT INTO src.customers VALUES ('c26', 'Customer 26', 'free', 26)",
    )
    third = run(wh, models)
    assert third.counts == {"added": 1, "changed": 2, "removed": 1, "unchanged": 22}
    assert sorted(r["key"] for r in receiver.accepted()) == ["c03", "c04", "c26"]
    sent = {r["key"]: r["fields"]["plan"] for r in receiver.accepted()}
    assert sent == {"c03": "pro", "c04": "pro", "c26": "free"}
    stored = wh.retl_recent_runs("customers")
    assert [r["run_id"] for r in stored] == [third.run_id, again.run_id, first.run_id]
    assert SECRET not in json.dumps(stored)


def test_batch_that_keeps_failing_is_retried_next_run_and_not_snapshotted(
    open_wh, receiver: Receiver, tmp_path: Path
) -> None:
    wh = open_wh()
    make_customers(wh, 25)
    models = write_model(tmp_path / "models", webhook(receiver, max_attempts=3))
    down = {"on": True}

    def second_batch_down(body: dict[str, Any], headers: dict[str, str]) -> Reply | None:
        keys = {r["key"] for r in body["records"]}
        return (503, {}, "maintenance") if down["on"] and "c15" in keys else None

    receiver.rule = second_batch_down
    first = run(wh, models)
    assert first.status == "partial" and first.sent["added"] == 15 and first.failed == 10
    assert first.failures[0] == {
        "key": "c11",
        "op": "upsert",
        "reason": "HTTP 503 after 3 attempts",
    }
    assert sum(r["status"] == 503 for r in receiver.requests) == 3  # max_attempts
    assert wh.retl_snapshot_count("customers") == 15  # only what was accepted

    plan = plan_model(wh, load_model(models, "customers"))
    assert plan.changes.counts["added"] == 10  # the failed records, nothing else

    down["on"] = False
    second = run(wh, models)
    assert second.status == "success" and second.sent["added"] == 10
    assert len(receiver.accepted()) == 25
    assert_exactly_once(receiver)
    assert wh.retl_snapshot_count("customers") == 25


def test_a_change_back_to_an_earlier_state_gets_a_new_id(
    open_wh, receiver: Receiver, tmp_path: Path
) -> None:
    """A receiver that drops ids it has applied (as Segment does with messageId) must
    still see free -> pro -> free, and a row deleted then re-created as it was."""
    wh = open_wh()
    make_customers(wh, 3)
    models = write_model(tmp_path / "models", webhook(receiver), mode="mirror")
    state: dict[str, dict[str, Any]] = {}
    applied: set[str] = set()

    def drops_repeats(body: dict[str, Any], headers: dict[str, str]) -> Reply | None:
        for record in body["records"]:
            if record["id"] in applied:
                continue
            applied.add(record["id"])
            if record["op"] == "delete":
                state.pop(record["key"], None)
            else:
                state[record["key"]] = record["fields"]
        return None

    receiver.rule = drops_repeats
    steps = [
        [],
        ["UPDATE src.customers SET plan = 'pro' WHERE id = 'c01'"],
        ["UPDATE src.customers SET plan = 'free' WHERE id = 'c01'"],
        ["DELETE FROM src.customers WHERE id = 'c02'"],
        ["INSERT INTO src.customers VALUES ('c02', 'Customer 2', 'free', 2)"],
    ]
    for statements in steps:
        sql(wh, *statements)
        assert run(wh, models).status == "success"
    assert state["c01"]["plan"] == "free"
    assert "c02" in state
    assert sorted(state) == ["c01", "c02", "c03"]
    assert_exactly_once(receiver)


def test_record_ids_over_a_models_life(open_wh, receiver: Receiver, tmp_path: Path) -> None:
    from tests.retl_ids_scenario import ids_scenario

    ids_scenario(open_wh(), tmp_path, receiver)


def test_a_batch_applied_but_timed_out_is_resent_with_the_same_ids(
    open_wh, receiver: Receiver, tmp_path: Path
) -> None:
    """The receiver applies the batch, then answers too late: every retry, and the next
    run, carry the same ids, so a receiver deduplicating on them applies it once."""
    wh = open_wh()
    make_customers(wh, 4)
    models = write_model(
        tmp_path / "models", webhook(receiver, max_attempts=2, timeout_seconds=0.3)
    )
    receiver.delays = [0.8, 0.8]  # both attempts of the first batch: applied, answer lost
    first = run(wh, models)
    assert first.status == "partial" and first.failed == 4
    assert "connection failed (ReadTimeout)" in first.failures[0]["reason"]
    attempts = [[r["id"] for r in q["body"]["records"]] for q in receiver.requests]
    assert len(attempts) == 2 and attempts[0] == attempts[1]
    assert wh.retl_snapshot_count("customers") == 0

    second = run(wh, models)
    assert second.status == "success" and second.sent["added"] == 4
    resent = [r["id"] for r in receiver.requests[-1]["body"]["records"]]
    assert resent == attempts[0]
    assert len({r["id"] for q in receiver.requests for r in q["body"]["records"]}) == 4


def test_malformed_record_is_isolated_and_secrets_never_reported(
    open_wh, receiver: Receiver, tmp_path: Path
) -> None:
    wh = open_wh()
    make_customers(wh, 12)
    models = write_model(tmp_path / "models", webhook(receiver))

    def reject_c07(body: dict[str, Any], headers: dict[str, str]) -> Reply | None:
        if any(r["key"] == "c07" for r in body["records"]):
            # A careless receiver echoing the credentials it got.
            return 422, {}, f"bad score for c07 (auth was {headers['authorization']})"
        return None

    receiver.rule = reject_c07
    report = run(wh, models)
    assert report.status == "partial" and report.failed == 1 and report.sent["added"] == 11
    assert report.failures[0]["key"] == "c07"
    assert report.failures[0]["reason"].startswith("HTTP 422: bad score for c07")
    assert SECRET not in json.dumps(report.to_dict())
    assert SECRET not in json.dumps(wh.retl_recent_runs("customers"))
    # batch of 10 rejected, then its records one by one; the last 2 in their own batch
    assert [len(r["body"]["records"]) for r in receiver.requests] == [10] + [1] * 10 + [2]


@pytest.mark.parametrize(
    "echo",
    ["bare token", "url-encoded", "whole header", "json-escaped"],
)
def test_a_webhook_echoing_any_form_of_its_token_leaks_nothing(
    open_wh, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, echo: str
) -> None:
    secret = "Bearer s3cr3t/t0ken+x=y"
    monkeypatch.setenv("RETL_TEST_TOKEN", secret)
    token = secret.split(" ", 1)[1]
    forms = {
        "bare token": token,
        "url-encoded": "s3cr3t%2Ft0ken%2Bx%3Dy",
        "whole header": f"Authorization: {secret}",
        "json-escaped": json.dumps(token)[1:-1].replace("/", "\\/"),
    }
    wh = open_wh()
    make_customers(wh, 2)
    models = write_model(tmp_path / "models", webhook(receiver, batch_size=1))

    def echoes(body: dict[str, Any], headers: dict[str, str]) -> Reply | None:
        return 422, {}, f"rejected: token {forms[echo]} is not allowed to write"

    receiver.rule = echoes
    report = run(wh, models)
    assert report.status == "partial" and report.failed == 2
    reason = report.failures[0]["reason"]
    assert reason.startswith("HTTP 422: rejected: token ") and "***" in reason
    stored = json.dumps(wh.retl_recent_runs("customers"))
    for text in (json.dumps(report.to_dict()), stored):
        assert token not in text and "s3cr3t" not in text


def test_segment_echoing_its_basic_auth_header_leaks_nothing(
    open_wh, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEGMENT_WRITE_KEY", "wk_l1ve_do_not_print")
    basic = base64.b64encode(b"wk_l1ve_do_not_print:").decode()
    wh = open_wh()
    make_customers(wh, 1)
    models = write_model(tmp_path / "models", {"type": "segment", "endpoint": receiver.url})

    def echoes(body: dict[str, Any], headers: dict[str, str]) -> Reply | None:
        assert headers["authorization"] == f"Basic {basic}"
        return 400, {}, f"bad batch (authorization: Basic {basic})"

    receiver.rule = echoes
    report = run(wh, models)
    assert report.failures[0]["reason"] == "HTTP 400: bad batch (authorization: Basic ***)"
    stored = json.dumps(wh.retl_recent_runs("customers"))
    for text in (json.dumps(report.to_dict()), stored):
        assert basic.rstrip("=") not in text and "wk_l1ve" not in text


def test_retry_after_is_honoured(open_wh, receiver: Receiver, tmp_path: Path) -> None:
    wh = open_wh()
    make_customers(wh, 3)
    models = write_model(tmp_path / "models", webhook(receiver, backoff_seconds=0))
    receiver.script = [(429, {"Retry-After": "1"}, "")]
    started = time.monotonic()
    report = run(wh, models)
    assert time.monotonic() - started >= 1.0
    assert report.status == "success" and [r["status"] for r in receiver.requests] == [429, 200]


def test_unauthorised_stops_the_run_and_sends_nothing_twice(
    open_wh, receiver: Receiver, tmp_path: Path
) -> None:
    wh = open_wh()
    make_customers(wh, 25)
    models = write_model(tmp_path / "models", webhook(receiver))
    receiver.script = [(200, {}, "{}"), (401, {}, "who are you")]
    report = run(wh, models)
    assert report.status == "failed" and "HTTP 401" in (report.error or "")
    assert report.sent["added"] == 10 and report.failed == 10 and report.unsent == 5
    assert len(receiver.requests) == 2  # no retries, no further batches
    receiver.clear()
    assert run(wh, models).sent["added"] == 15


# --- the four sync modes --------------------------------------------------------------
EXPECTED = {
    # mode: (run 1 ops, run 2 ops after c01 changed / c02 removed / c07 added, run 3 after
    #        c07 changed)
    "upsert": (
        {f"c0{i}": "upsert" for i in range(1, 7)},
        {"c01": "upsert", "c07": "upsert"},
        {"c07": "upsert"},
    ),
    "insert": ({f"c0{i}": "insert" for i in range(1, 7)}, {"c07": "insert"}, {}),
    "update": ({}, {"c01": "update"}, {"c07": "update"}),
    "mirror": (
        {f"c0{i}": "upsert" for i in range(1, 7)},
        {"c01": "upsert", "c02": "delete", "c07": "upsert"},
        {"c07": "upsert"},
    ),
}


@pytest.mark.parametrize("mode", list(EXPECTED))
def test_sync_modes(open_wh, receiver: Receiver, tmp_path: Path, mode: str) -> None:
    wh = open_wh()
    make_customers(wh, 6)
    models = write_model(tmp_path / "models", webhook(receiver), mode=mode)
    receiver.script = [(500, {}, ""), (429, {"Retry-After": "0"}, "")]
    changes = [
        [],
        [
            "UPDATE src.customers SET score = 100 WHERE id = 'c01'",
            "DELETE FROM src.customers WHERE id = 'c02'",
            "INSERT INTO src.customers VALUES ('c07', 'Customer 7', 'pro', 7)",
        ],
        ["UPDATE src.customers SET plan = 'enterprise' WHERE id = 'c07'"],
    ]
    reports = []
    for step, (statements, expected) in enumerate(zip(changes, EXPECTED[mode], strict=True)):
        sql(wh, *statements)
        before = len(receiver.accepted())
        report = run(wh, models)
        got = {r["key"]: r["op"] for r in receiver.accepted()[before:]}
        assert got == expected, (mode, step)
        assert report.status == "success" and sum(report.sent.values()) == len(expected)
        reports.append(report)
    if mode == "update":  # new rows are a baseline: recorded, not sent
        assert [r.baseline for r in reports] == [6, 1, 0]
        assert receiver.accepted()[0]["fields"]["score"] == 100
    else:
        assert [r.baseline for r in reports] == [0, 0, 0]
    deleted = [r for r in receiver.accepted() if r["op"] == "delete"]
    assert all(r["fields"] == {"customer_id": r["key"]} for r in deleted)
    assert_exactly_once(receiver)
    quiet = run(wh, models)
    assert sum(quiet.sent.values()) == 0
    # insert never sends changes, so c01's and c07's stay pending in its snapshot
    assert quiet.counts["changed"] == (2 if mode == "insert" else 0)


def test_segment_track_calls(open_wh, receiver: Receiver, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SEGMENT_WRITE_KEY", "wk_track")
    wh = open_wh()
    make_customers(wh, 3)
    destination = {
        "type": "segment",
        "endpoint": receiver.url,
        "call": "track",
        "event": "Customer Scored",
    }
    models = write_model(
        tmp_path / "models", destination, mapping={"customer_id": "userId", "score": "score"}
    )
    assert run(wh, models).sent["added"] == 3
    messages = receiver.accepted()
    assert [(m["type"], m["event"], m["userId"], m["properties"]) for m in messages] == [
        ("track", "Customer Scored", f"c0{i}", {"score": i}) for i in (1, 2, 3)
    ]
    assert messages[0]["context"]["library"]["name"] == "sluice"


def test_segment_group_calls(open_wh, receiver: Receiver, tmp_path: Path, monkeypatch) -> None:
    """group: the model's key is the groupId, a column mapped to userId is the member,
    the other mapped fields are group traits; each change goes out once."""
    monkeypatch.setenv("SEGMENT_WRITE_KEY", "wk_group")
    wh = open_wh()
    make_customers(wh, 3)
    models = tmp_path / "models"
    models.mkdir()
    (models / "accounts.sql").write_text(
        "SELECT id AS account_id, 'owner-' || id AS owner_id, plan, score\n"
        "FROM {{ schema }}.customers\n"
    )
    spec = {
        "key": "account_id",
        "schema": "src",
        "destination": {"type": "segment", "endpoint": receiver.url, "call": "group"},
        "mapping": {"owner_id": "userId", "plan": "plan", "score": "employees"},
    }
    (models / "accounts.yml").write_text(yaml.safe_dump(spec, sort_keys=False))

    first = run(wh, models, "accounts")
    assert first.status == "success" and first.sent["added"] == 3
    assert first.destination == f"segment group -> {receiver.url}/v1/batch"
    posted = receiver.requests[-1]
    assert posted["path"] == "/v1/batch"
    auth = base64.b64encode(b"wk_group:").decode()
    assert posted["headers"]["authorization"] == f"Basic {auth}"
    messages = receiver.accepted()
    # The key (not mapped to groupId) is the groupId, and is sent as a trait too.
    assert [(m["type"], m["groupId"], m["userId"], m["traits"]) for m in messages] == [
        (
            "group",
            f"c0{i}",
            f"owner-c0{i}",
            {"account_id": f"c0{i}", "plan": "free", "employees": i},
        )
        for i in (1, 2, 3)
    ]
    assert all("event" not in m and "properties" not in m for m in messages)

    sql(wh, "UPDATE src.customers SET plan = 'pro' WHERE id = 'c02'")
    receiver.clear()
    second = run(wh, models, "accounts")
    assert second.counts["changed"] == 1 and second.sent["changed"] == 1
    assert [(m["groupId"], m["traits"]["plan"]) for m in receiver.accepted()] == [("c02", "pro")]
    receiver.clear()
    assert sum(run(wh, models, "accounts").sent.values()) == 0 and receiver.requests == []

    # A group call without a member (no column mapped to userId/anonymousId) is refused.
    spec["mapping"] = {"plan": "plan"}
    (models / "accounts.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(ModelError, match="a group call needs a member"):
        run(wh, models, "accounts")
    assert receiver.requests == []


# --- the example models on the sample project, through the Segment destination --------
def test_example_models_on_the_sample_project(
    open_wh, receiver: Receiver, sample_archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wh = open_wh()
    Loader(wh).load(str(sample_archive), "javascript_production")
    monkeypatch.setenv("SEGMENT_ENDPOINT", receiver.url)
    monkeypatch.setenv("SEGMENT_WRITE_KEY", "wk_test_123")
    receiver.script = [(502, {}, "bad gateway")]

    users = run(wh, REPO_MODELS, "users_lifetime_revenue")
    expected = dict(
        wh.query(
            "SELECT u.id, CAST(sum(o.revenue) AS numeric(18, 2)) FROM "
            "javascript_production.users u JOIN javascript_production.order_completed o "
            "ON o.user_id = u.id GROUP BY u.id"
        )
    )
    assert users.status == "success" and users.sent["added"] == len(expected) > 10
    assert users.destination == f"segment identify -> {receiver.url}/v1/batch"
    posted = receiver.requests[-1]
    assert posted["path"] == "/v1/batch" and "sentAt" in posted["body"]
    auth = base64.b64encode(b"wk_test_123:").decode()
    assert posted["headers"]["authorization"] == f"Basic {auth}"
    messages = receiver.accepted()
    assert {m["type"] for m in messages} == {"identify"}
    assert {m["userId"]: m["traits"]["lifetime_revenue"] for m in messages} == {
        k: float(v) for k, v in expected.items()
    }
    first = messages[0]
    assert set(first["traits"]) == {
        "email",
        "plan",
        "orders_count",
        "lifetime_revenue",
        "last_order_at",
    }
    assert len({m["messageId"] for m in messages}) == len(messages)
    assert "wk_test_123" not in json.dumps(wh.retl_recent_runs())

    accounts_plan = plan_model(wh, load_model(REPO_MODELS, "accounts_active_users_7d"))
    monkeypatch.setenv("ACCOUNTS_WEBHOOK_URL", f"{receiver.url}/accounts")
    monkeypatch.setenv("ACCOUNTS_WEBHOOK_TOKEN", SECRET)
    receiver.clear()
    accounts = run(wh, REPO_MODELS, "accounts_active_users_7d")
    n_accounts = list(wh.query("SELECT count(*) FROM javascript_production.accounts"))[0][0]
    assert accounts.sent["added"] == accounts_plan.changes.to_send == n_accounts
    active = {r["key"]: r["fields"]["active_users_7d"] for r in receiver.accepted()}
    assert sum(active.values()) > 0 and receiver.requests[0]["path"] == "/accounts"

    receiver.clear()
    assert sum(run(wh, REPO_MODELS, "users_lifetime_revenue").sent.values()) == 0
    assert sum(run(wh, REPO_MODELS, "accounts_active_users_7d").sent.values()) == 0
    assert receiver.requests == []


# --- table and file destinations ------------------------------------------------------
def test_table_destination_mirrors_the_model(open_wh, tmp_path: Path) -> None:
    wh = open_wh()
    make_customers(wh, 8)
    destination = {"type": "table", "schema": "crm", "table": "customers_out", "batch_size": 3}
    models = write_model(
        tmp_path / "models",
        destination,
        mode="mirror",
        mapping={"customer_id": "id", "name": "full_name", "score": "score"},
    )
    source = "SELECT id, name, score FROM src.customers ORDER BY id"
    target = "SELECT id, full_name, score FROM crm.customers_out ORDER BY id"
    first = run(wh, models)
    assert first.status == "success" and first.sent["added"] == 8
    assert list(wh.query(target)) == list(wh.query(source))
    sql(
        wh,
        "UPDATE src.customers SET score = 99, plan = 'pro' WHERE id = 'c01'",
        "UPDATE src.customers SET plan = 'pro' WHERE id = 'c02'",  # plan is not mapped
        "DELETE FROM src.customers WHERE id IN ('c03', 'c04')",
        "INSERT INTO src.customers VALUES ('c09', 'Customer 9', 'free', 9)",
    )
    second = run(wh, models)
    assert second.counts == {"added": 1, "changed": 1, "removed": 2, "unchanged": 5}
    assert list(wh.query(target)) == list(wh.query(source))
    assert sum(run(wh, models).sent.values()) == 0


def test_table_destination_in_another_target(
    open_wh, warehouse_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """`target:` names another profiles.yml target (here the other kind of warehouse): the
    model runs where its data is, its rows land in the other target, which the run
    opens itself and closes after."""
    from loader.warehouses.duckdb import DuckDBWarehouse
    from loader.warehouses.postgres import PostgresWarehouse

    def open_crm() -> Any:
        if warehouse_kind == "duckdb":
            return PostgresWarehouse("crm", request.getfixturevalue("pg_dsn"))
        return DuckDBWarehouse("crm", str(tmp_path / "crm.duckdb"))

    opened: list[str] = []

    def open_target(name: str) -> Any:
        opened.append(name)
        return open_crm()

    wh = open_wh()
    make_customers(wh, 5)
    destination = {"type": "table", "target": "crm", "schema": "sales", "table": "customers"}
    models = write_model(
        tmp_path / "models",
        destination,
        mode="mirror",
        mapping={"customer_id": "id", "name": "full_name", "plan": "plan"},
    )
    source = "SELECT id, name, plan FROM src.customers ORDER BY id"
    target = "SELECT id, full_name, plan FROM sales.customers ORDER BY id"

    def landed() -> list[tuple[Any, ...]]:
        crm = open_crm()
        try:
            return [tuple(r) for r in crm.query(target)]
        finally:
            crm.close()

    first = run(wh, models, open_target=open_target)
    assert first.status == "success" and first.sent["added"] == 5
    assert first.destination == "table sales.customers (target crm)"
    assert opened == ["crm"]
    assert landed() == [tuple(r) for r in wh.query(source)]
    # Nothing was written into the model's own warehouse.
    assert "customers" not in wh.read_schema("sales")

    sql(
        wh,
        "UPDATE src.customers SET plan = 'pro' WHERE id = 'c02'",
        "DELETE FROM src.customers WHERE id = 'c05'",
        "INSERT INTO src.customers VALUES ('c06', 'Customer 6', 'team', 6)",
    )
    second = run(wh, models, open_target=open_target)
    assert second.counts == {"added": 1, "changed": 1, "removed": 1, "unchanged": 3}
    assert landed() == [tuple(r) for r in wh.query(source)]
    assert sum(run(wh, models, open_target=open_target).sent.values()) == 0

    # Without a way to open other targets (no profiles.yml), the run says so.
    with pytest.raises(ConfigError, match="destination target 'crm' needs profiles.yml"):
        run(wh, models)


def test_file_destination_ndjson_and_csv(open_wh, tmp_path: Path) -> None:
    wh = open_wh()
    make_customers(wh, 5)
    out = tmp_path / "exports"
    models = write_model(tmp_path / "models", {"type": "file", "path": str(out)}, mode="mirror")
    run(wh, models)
    sql(wh, "DELETE FROM src.customers WHERE id = 'c05'", "UPDATE src.customers SET score = 0")
    run(wh, models)
    files = sorted((out / "customers").iterdir())
    assert [f.suffix for f in files] == [".ndjson", ".ndjson"]
    first = [json.loads(line) for line in files[0].read_text().splitlines()]
    second = [json.loads(line) for line in files[1].read_text().splitlines()]
    assert first[0] == {
        "_op": "upsert",
        "customer_id": "c01",
        "name": "Customer 1",
        "plan": "free",
        "score": 1,
    }
    assert len(first) == 5 and sorted(r["_op"] for r in second) == ["delete"] + ["upsert"] * 4
    assert {"_op": "delete", "customer_id": "c05"} in second

    models = write_model(
        tmp_path / "csv_models",
        {"type": "file", "path": str(tmp_path / "csv"), "format": "csv", "batch_size": 2},
        mode="insert",
    )
    sql(wh, "DELETE FROM _sluice.retl_snapshots")
    report = run(wh, models)
    parts = sorted((tmp_path / "csv" / "customers").iterdir())
    assert report.sent["added"] == 4 and len(parts) == 2
    rows = [r for p in parts for r in csv.DictReader(io.StringIO(p.read_text()))]
    assert rows[0] == {
        "_op": "insert",
        "customer_id": "c01",
        "name": "Customer 1",
        "plan": "free",
        "score": "0",
    }
    assert [r["customer_id"] for r in rows] == ["c01", "c02", "c03", "c04"]


def test_file_destination_on_s3(open_wh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        bucket = f"exports-{uuid.uuid4().hex[:8]}"  # moto's state outlives the server
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        wh = open_wh()
        make_customers(wh, 4)
        options = {"client_kwargs": {"endpoint_url": endpoint}}
        destination = {"type": "file", "path": f"s3://{bucket}/retl", "storage_options": options}
        models = write_model(tmp_path / "models", destination)
        assert run(wh, models).sent["added"] == 4
        listed = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket)
        keys = [o["Key"] for o in listed["Contents"]]
        assert len(keys) == 1 and keys[0].startswith("retl/customers/")
        body = boto3.client("s3", endpoint_url=endpoint).get_object(Bucket=bucket, Key=keys[0])
        assert len(body["Body"].read().decode().splitlines()) == 4
    finally:
        server.stop()


# --- model files: errors name the file and line ---------------------------------------
def test_model_errors_name_file_and_line(tmp_path: Path, open_wh, receiver: Receiver) -> None:
    models = write_model(tmp_path / "m", webhook(receiver), mode="sideways")
    with pytest.raises(ModelError, match=r"customers.yml, line 2: field 'mode'"):
        load_model(models, "customers")

    models = write_model(tmp_path / "m", {"type": "segment", "call": "track"})
    with pytest.raises(ModelError, match=r"line 4: field 'destination'.*needs an `event:`"):
        load_model(models, "customers")

    models = write_model(tmp_path / "m", {"type": "segment"}, mode="mirror")
    with pytest.raises(ModelError, match=r"line 2: the segment destination cannot delete"):
        load_model(models, "customers")

    models = write_model(tmp_path / "m", {"type": "ftp"})
    with pytest.raises(ModelError, match=r"line 5: destination type 'ftp' is not one of"):
        load_model(models, "customers")

    (models / "customers.sql").write_text("SELECT 1 AS customer_id\nFROM {{ shema }}.x\n")
    spec = {"key": "customer_id", "destination": webhook(receiver)}
    (models / "customers.yml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ModelError, match=r"customers.sql, line 2: unknown placeholder"):
        load_model(models, "customers")

    with pytest.raises(ModelError, match=r"model 'nope' not found.*models in .*: customers"):
        load_model(models, "nope")

    wh = open_wh()
    make_customers(wh, 3)
    sql(wh, "INSERT INTO src.customers VALUES ('c04', 'Customer 1', 'free', 1)")
    models = write_model(tmp_path / "m", webhook(receiver), mapping={"email": "email"})
    with pytest.raises(ModelError, match=r"line \d+: mapped column 'email' is not among"):
        run(wh, models)
    models_ok = write_model(tmp_path / "m2", webhook(receiver))
    (models_ok / "customers.sql").write_text(
        "SELECT name AS customer_id, plan FROM {{ schema }}.customers"
    )
    with pytest.raises(ModelError, match=r"1 value\(s\) of key 'customer_id' occur more than"):
        run(wh, models_ok)
    assert receiver.requests == []


@pytest.mark.parametrize("value", ["x #y", "a: b", "{abc", "'quoted'", "back\\slash", "null"])
def test_model_file_variables_arrive_exactly_as_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """${VAR} in a model file is substituted after parsing: a value's characters never
    change the file's structure (text substitution cut `x #y` to `x`, broke on `a: b`)."""
    monkeypatch.setenv("SLUICE_T_HEADER", value)
    models = tmp_path / "models"
    write_model(models, {"type": "webhook", "url": "http://127.0.0.1:9/hook"})
    spec = (models / "customers.yml").read_text()
    (models / "customers.yml").write_text(spec + "  headers:\n    X-Team: ${SLUICE_T_HEADER}\n")
    model = load_model(models, "customers")
    assert model.destination.headers == {"X-Team": value}
    monkeypatch.delenv("SLUICE_T_HEADER")
    with pytest.raises(ModelError, match=r"customers.yml, line \d+: environment variable "):
        load_model(models, "customers")
