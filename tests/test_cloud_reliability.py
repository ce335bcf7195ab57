"""Cloud sources under the faults of a fault-injection audit, against loopback servers:
an event in the cursor's own second, a body dripped a byte at a time, a body cut or not
JSON, error bodies echoing credentials; on DuckDB and PostgreSQL."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from loader.config.errors import ConfigError
from loader.sources.cloud.engine import Deadlines, RetryPolicy, SourceError
from loader.sources.cloud.salesforce import SalesforceConnector
from loader.sources.cloud.stripe import StripeConnector
from loader.sources.cloud.zendesk import ZendeskConnector
from loader.sync.object_pipeline import ObjectLoader
from loader.sync.project import load_project
from tests.fake_apis import FakeSalesforce, FakeStripe, FakeZendesk, Fault
from tests.helpers import rows, sluice, write_duckdb_profiles

FAST = RetryPolicy(attempts=4, backoff_s=0.01, backoff_max_s=0.05, jitter_s=0.0)
KEY = "sk_live_51Hx9do_not_print_me"


@pytest.fixture
def stripe() -> Iterator[FakeStripe]:
    api = FakeStripe()
    for i in range(3):
        api.create("customers", id=f"cus_{i}", email=f"c{i}@example.com")
    yield api
    api.stop()


# --- 20.2: a timestamp cursor loses nothing of its own second --------------------------
def test_stripe_event_in_the_cursors_second_is_applied(open_wh, stripe: FakeStripe) -> None:
    wh = open_wh()
    connector = StripeConnector(KEY, stripe.url, FAST)
    ObjectLoader(wh).sync(connector, "stripe", ["customers"])
    stripe.update("customers", "cus_1", "customer.updated", email="one@example.com")
    ObjectLoader(wh).sync(connector, "stripe", ["customers"])
    cursor = orjson.loads(wh.read_cursors("stripe")["customers"])
    assert cursor["events"]["at"] == stripe.events[-1]["created"]

    # Another change in that same second, listed only after the sync ran.
    stripe.clock -= 1
    stripe.update("customers", "cus_2", "customer.updated", email="two@example.com")
    assert stripe.events[-1]["created"] == stripe.events[-2]["created"]
    stripe.clock -= 1
    stripe.create("customers", id="cus_3", email="three@example.com")  # same second again
    third = ObjectLoader(wh).sync(connector, "stripe", ["customers"])
    emails = dict(rows(wh, "stripe", "customers", "id, email"))
    assert emails["cus_2"] == "two@example.com"
    assert emails["cus_3"] == "three@example.com"
    assert emails["cus_1"] == "one@example.com"
    assert third.rows_loaded == {"customers": 2}  # cus_1's event is not applied twice
    # Nothing new: a rerun loads nothing (the boundary's ids are remembered).
    assert ObjectLoader(wh).sync(connector, "stripe", ["customers"]).rows_loaded == {}


def test_zendesk_time_export_takes_its_boundary_second_once(open_wh) -> None:
    api = FakeZendesk()
    try:
        for i in range(3):
            api.put("organizations", id=200 + i, name=f"Org {i}", deleted_at=None)
        wh = open_wh()
        connector = ZendeskConnector(api.url, "admin@example.com", "tok", FAST)
        first = ObjectLoader(wh).sync(connector, "zendesk", ["organizations"])
        assert first.rows_loaded == {"organizations": 3}
        # A rerun with nothing changed loads nothing, though the API (inclusive
        # start_time) returns the boundary second again.
        assert ObjectLoader(wh).sync(connector, "zendesk", ["organizations"]).rows_loaded == {}
        api.clock -= 1  # an organization changed in the cursor's second, after the sync
        api.put("organizations", id=299, name="Late", deleted_at=None)
        late = ObjectLoader(wh).sync(connector, "zendesk", ["organizations"])
        assert late.rows_loaded == {"organizations": 1}
        assert rows(wh, "zendesk", "organizations", "count(*)") == [(4,)]
    finally:
        api.stop()


def test_salesforce_rerun_skips_the_records_of_its_boundary(open_wh) -> None:
    api = FakeSalesforce()
    try:
        for i in range(3):
            api.put("Account", Id=f"001{i}", Name=f"Acme {i}")
        wh = open_wh()
        connector = SalesforceConnector(api.url, "token", retry=FAST)
        assert ObjectLoader(wh).sync(connector, "sf", ["accounts"]).rows_loaded == {"accounts": 3}
        assert ObjectLoader(wh).sync(connector, "sf", ["accounts"]).rows_loaded == {}
        api.clock -= 1  # saved in the cursor's second
        api.put("Account", Id="0019", Name="Late")
        assert ObjectLoader(wh).sync(connector, "sf", ["accounts"]).rows_loaded == {"accounts": 1}
    finally:
        api.stop()


# --- 20.8: deadlines -----------------------------------------------------------------
def test_a_dripping_response_hits_the_request_deadline(stripe: FakeStripe, open_wh) -> None:
    wh = open_wh()
    stripe.inject(Fault(200, times=-1, path_contains="/v1/customers", drip_s=0.05))
    connector = StripeConnector(KEY, stripe.url, FAST, Deadlines(request_s=0.6, sync_s=60))
    started = time.monotonic()
    with pytest.raises(SourceError) as caught:
        ObjectLoader(wh).sync(connector, "stripe", ["customers"])
    elapsed = time.monotonic() - started
    assert elapsed < 2.5, elapsed  # one 0.6 s deadline (plus setup), not 4 attempts of it
    message = str(caught.value)
    assert "/v1/customers did not complete within the request deadline of 0.6 s" in message
    assert "request_timeout_seconds in sluice.yml" in message
    assert "what was committed stands" in message
    assert wh.recent_runs()[0]["status"] == "failed"


def test_headers_dripped_a_byte_at_a_time_hit_the_request_deadline(
    stripe: FakeStripe,
) -> None:
    """Each byte resets a read timeout; the deadline is a watchdog on the whole request."""
    stripe.inject(Fault(200, times=-1, path_contains="/v1/events", drip_headers_s=0.05))
    connector = StripeConnector(KEY, stripe.url, FAST, Deadlines(request_s=0.5, sync_s=60))
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"/v1/events did not complete within the request"):
        list(connector.pages("customers", None))
    assert time.monotonic() - started < 1.5


def test_the_sync_budget_bounds_a_whole_sync(stripe: FakeStripe, open_wh) -> None:
    for i in range(3, 12):
        stripe.create("customers", id=f"cus_{i}", email=f"c{i}@example.com")
    # Two pages come at once, then every page drips (~30 s each, within the request
    # deadline): only the sync's budget stops it.
    stripe.inject(Fault(200, times=-1, path_contains="/v1/customers", after_ok=2, drip_s=0.1))
    connector = StripeConnector(KEY, stripe.url, FAST, Deadlines(request_s=120, sync_s=1.5))
    connector.begin_sync()
    started = time.monotonic()
    pages = []
    with pytest.raises(SourceError, match=r"sync used up its time budget of 1\.5 s .*during GET"):
        pages.extend(connector.pages("customers", None))
    assert 1.4 < time.monotonic() - started < 3  # a dripped page alone takes ~30 s
    assert [len(p.objects) for p in pages] == [2, 2]

    # Through the loader: the run ends failed with the sentence; nothing half-written;
    # the next sync (a new budget) completes.
    wh = open_wh()
    with pytest.raises(SourceError, match="sync_budget_seconds in sluice.yml"):
        ObjectLoader(wh).sync(connector, "stripe", ["customers"])
    run = wh.recent_runs()[0]
    assert run["status"] == "failed" and "time budget of 1.5 s" in run["error"]
    stripe.heal()
    assert ObjectLoader(wh).sync(connector, "stripe", ["customers"]).status == "success"
    assert rows(wh, "stripe", "customers", "count(*), count(DISTINCT id)") == [(12, 12)]


def test_sluice_yml_deadlines_are_validated_and_reported(
    tmp_path: Path, stripe: FakeStripe
) -> None:
    write_duckdb_profiles(tmp_path)
    source = (
        "version: 1\nsources:\n  payments:\n    kind: stripe\n    api_key: sk\n"
        f"    base_url: {stripe.url}\n    collections: [customers]\n"
    )
    (tmp_path / "sluice.yml").write_text(source + "    request_timeout_seconds: -1\n")
    with pytest.raises(
        ConfigError,
        match=r"line 8: field .sources\.payments\.request_timeout_seconds. must be more than 0",
    ) as bad:
        load_project(tmp_path / "sluice.yml")
    assert "pydantic" not in str(bad.value)
    (tmp_path / "sluice.yml").write_text(source + "    request_timeout_seconds: 0.5\n")
    stripe.inject(Fault(200, times=-1, path_contains="/v1/customers", drip_s=0.05))
    slow = sluice("sync", "payments", cwd=tmp_path)
    assert slow.returncode == 1
    assert "request deadline of 0.5 s" in slow.stderr and "Traceback" not in slow.stderr


# --- 20.14: bodies that are not JSON, connections dropped mid-body ---------------------
def test_malformed_json_is_retried_and_names_the_endpoint(stripe: FakeStripe, open_wh) -> None:
    wh = open_wh()
    stripe.inject(Fault(200, times=1, path_contains="/v1/customers", raw_body='{"data": [}'))
    connector = StripeConnector(KEY, stripe.url, FAST)
    assert ObjectLoader(wh).sync(connector, "stripe", ["customers"]).status == "success"
    assert rows(wh, "stripe", "customers", "count(*)") == [(3,)]

    stripe.inject(Fault(200, times=-1, path_contains="/v1/events", raw_body="<html>oops"))
    with pytest.raises(SourceError) as caught:
        ObjectLoader(wh).sync(connector, "stripe", ["customers"])
    message = str(caught.value)
    assert message.startswith("stripe: a body that is not JSON (")
    assert "/v1/events after 4 attempts" in message
    assert len([1 for _, p, _, _ in stripe.requests if p == "/v1/events"]) >= 4


def test_a_body_cut_mid_way_is_retried(stripe: FakeStripe, open_wh) -> None:
    wh = open_wh()
    stripe.inject(Fault(200, times=2, path_contains="/v1/customers", cut_body=True))
    connector = StripeConnector(KEY, stripe.url, FAST)
    assert ObjectLoader(wh).sync(connector, "stripe", ["customers"]).status == "success"
    assert rows(wh, "stripe", "customers", "count(*)") == [(3,)]
    stripe.inject(Fault(200, times=-1, path_contains="/v1/customers", cut_body=True))
    with pytest.raises(SourceError, match=r"dropped mid-body .* from GET http://\S+/v1/customers"):
        ObjectLoader(wh).sync(connector, "stripe", ["customers"])


# --- 20.13: an API echoing the credentials it got ------------------------------------
def test_stripe_echoing_its_authorization_header_leaks_nothing(
    tmp_path: Path, stripe: FakeStripe
) -> None:
    write_duckdb_profiles(tmp_path)
    (tmp_path / "sluice.yml").write_text(
        "version: 1\nsources:\n  payments:\n    kind: stripe\n    api_key: ${SLUICE_TEST_KEY}\n"
        f"    base_url: {stripe.url}\n    collections: [customers]\n"
    )
    stripe.inject(Fault(400, times=-1, echo_headers=True))
    run = sluice("sync", "payments", cwd=tmp_path, env={"SLUICE_TEST_KEY": KEY})
    assert run.returncode == 1 and "400 from GET http" in run.stderr and "/v1/events:" in run.stderr
    assert "***" in run.stderr  # the echo is there, masked
    import duckdb

    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as conn:
        stored = str(conn.execute("SELECT * FROM _sluice.sync_runs").fetchall())
    assert "400 from GET" in stored
    for text in (run.stdout, run.stderr, stored):
        assert KEY not in text and KEY[:20] not in text


def test_zendesk_echoing_its_basic_auth_leaks_nothing(open_wh) -> None:
    api = FakeZendesk()
    try:
        api.inject(Fault(422, times=-1, echo_headers=True))
        wh = open_wh()
        token = "zdTok3n-do-not-print"
        connector = ZendeskConnector(api.url, "admin@example.com", token, FAST)
        with pytest.raises(SourceError) as caught:
            ObjectLoader(wh).sync(connector, "zendesk", ["tickets"])
        basic = base64.b64encode(f"admin@example.com/token:{token}".encode()).decode()
        stored = orjson.dumps(wh.recent_runs()).decode()
        for text in (str(caught.value), stored):
            assert "/api/v2/incremental/tickets/cursor.json: " in text and "422 from GET" in text
            assert token not in text and basic.rstrip("=") not in text
    finally:
        api.stop()


def test_a_cursor_saved_by_an_earlier_version_resumes_without_a_gap(
    open_wh, stripe: FakeStripe
) -> None:
    """Cursors saved as `created > x` / `events > x` are read as inclusive boundaries
    with nothing seen: the boundary second is fetched once more, nothing is lost."""
    wh = open_wh()
    connector = StripeConnector(KEY, stripe.url, FAST)
    ObjectLoader(wh).sync(connector, "stripe", ["customers"])
    newest = max(o["created"] for o in stripe.objects["customers"])
    stripe.update("customers", "cus_0", "customer.updated", email="zero@example.com")
    last_event = stripe.events[-1]["created"]
    wh.ensure_bookkeeping()
    with wh.transaction():
        wh.save_cursor(
            "stripe", "customers", orjson.dumps({"created_gt": newest, "events_gt": 0}).decode()
        )
    stripe.clock = newest - 1
    stripe.create("customers", id="cus_9", email="nine@example.com")  # the boundary second
    stripe.clock = last_event
    ObjectLoader(wh).sync(connector, "stripe", ["customers"])
    emails = dict(rows(wh, "stripe", "customers", "id, email"))
    assert emails["cus_9"] == "nine@example.com" and emails["cus_0"] == "zero@example.com"
    cursor = orjson.loads(wh.read_cursors("stripe")["customers"])
    assert set(cursor) == {"created", "events"}
    assert cursor["events"] == {"at": last_event, "seen": [stripe.events[-1]["id"]]}
