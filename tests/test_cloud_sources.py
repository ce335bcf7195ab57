"""Cloud object sources against loopback servers that follow each API's contracts:
paging, incremental cursors, 429 storms, 500s mid-pagination, outages between pages,
objects updated and deleted between syncs; on DuckDB and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from loader.rules.selective_sync import parse
from loader.sources.cloud.engine import RetryPolicy, SourceError
from loader.sources.cloud.salesforce import SalesforceConnector
from loader.sources.cloud.stripe import StripeConnector
from loader.sources.cloud.zendesk import ZendeskConnector
from loader.sources.objects_archive import ObjectArchiveConnector
from loader.sync.object_pipeline import ObjectLoader
from tests.fake_apis import FakeSalesforce, FakeStripe, FakeZendesk, Fault
from tests.helpers import rows, sluice, write_duckdb_profiles, write_ndjson

FAST = RetryPolicy(attempts=6, backoff_s=0.01, backoff_max_s=0.05, jitter_s=0.0)


@pytest.fixture
def stripe() -> Iterator[FakeStripe]:
    api = FakeStripe()
    for i in range(7):
        api.create(
            "customers",
            id=f"cus_{i}",
            email=f"c{i}@example.com",
            address={"city": "Berlin", "country": "DE"},
            metadata={"plan": "pro"},
        )
    for i in range(5):
        api.create(
            "charges",
            id=f"ch_{i}",
            amount=100 * i,
            currency="eur",
            customer=f"cus_{i}",
            paid=True,
            refunds=[{"id": f"re_{i}"}],
        )
    api.create("invoices", id="in_0", total=1200, customer="cus_0")
    api.create("subscriptions", id="sub_0", status="active", customer="cus_0")
    yield api
    api.stop()


def test_stripe_full_then_incremental_with_429_storm(open_wh, stripe: FakeStripe) -> None:
    wh = open_wh()
    stripe.inject(Fault(429, times=5, path_contains="/v1/customers", retry_after="0"))
    connector = StripeConnector("sk_test_secret", stripe.url, FAST)
    report = ObjectLoader(wh).sync(connector, "stripe")
    assert report.status == "success"
    assert stripe.statuses("/v1/customers")[:5] == [429] * 5
    assert rows(wh, "stripe", "customers", "count(*)") == [(7,)]
    assert rows(wh, "stripe", "charges", "count(*)") == [(5,)]
    tables = wh.read_schema("stripe")
    assert {"customers", "charges", "invoices", "subscriptions"} <= set(tables)
    assert {"address_city", "metadata_plan", "received_at", "uuid_ts", "_deleted_at"} <= set(
        tables["customers"]
    )
    assert rows(wh, "stripe", "charges", "refunds")[0][0].startswith("[")

    # Between syncs: an update, a deletion, a new object.
    stripe.update("customers", "cus_1", "customer.updated", email="new@example.com")
    stripe.update("customers", "cus_2", "customer.deleted")
    stripe.create("charges", id="ch_new", amount=999, currency="eur", paid=False)
    stripe.create("customers", id="cus_new", email="new-customer@example.com")
    second = ObjectLoader(wh).sync(connector, "stripe")
    assert second.status == "success"
    by_id = {r[0]: r for r in rows(wh, "stripe", "customers", "id, email, _deleted_at")}
    assert by_id["cus_1"][1] == "new@example.com" and by_id["cus_1"][2] is None
    assert by_id["cus_2"][2] is not None
    assert len(by_id) == 8
    assert rows(wh, "stripe", "charges", "count(*), count(DISTINCT id)") == [(6, 6)]
    # Nothing changed since: a third sync sends nothing new and asks only for what is newer.
    third = ObjectLoader(wh).sync(connector, "stripe")
    assert third.rows_loaded == {}
    cursor = orjson.loads(wh.read_cursors("stripe")["charges"])
    newest = max(c["created"] for c in stripe.objects["charges"])
    assert cursor["created"] == {"at": newest, "seen": ["ch_new"]}
    last_listing = [q for s, p, q, _ in stripe.requests if p == "/v1/charges"][-1]
    assert last_listing["created[gte]"] == [str(newest)]
    # The secret is sent to the API only as the Authorization header.
    assert all(h.get("Authorization") == "Bearer sk_test_secret" for *_, h in stripe.requests)
    assert "sk_test_secret" not in orjson.dumps(second.to_dict()).decode()


def test_outage_between_pages_resumes_with_no_duplicate_or_gap(open_wh, stripe: FakeStripe) -> None:
    wh = open_wh()
    for i in range(5, 12):
        stripe.create("charges", id=f"ch_{i}", amount=i, currency="usd")
    connector = StripeConnector("sk", stripe.url, FAST)
    # Two pages of charges succeed, then the API is down (every retry gets a 500).
    stripe.inject(Fault(500, times=-1, path_contains="/v1/charges", after_ok=2))
    loader = ObjectLoader(wh, batch_objects=1)
    with pytest.raises(SourceError, match="500"):
        loader.sync(connector, "stripe", ["customers", "charges"])
    # Newest first, two pages of two were committed with the cursor after them.
    assert rows(wh, "stripe", "charges", "id") == [("ch_10",), ("ch_11",), ("ch_8",), ("ch_9",)]
    cursor = orjson.loads(wh.read_cursors("stripe")["charges"])
    assert cursor["scan"]["starting_after"] == "ch_8"
    ok_before = len([s for s, p, _, _ in stripe.requests if p == "/v1/charges" and s == 200])

    stripe.heal()
    resumed = ObjectLoader(wh, batch_objects=1).sync(connector, "stripe", ["charges"])
    assert resumed.status == "success"
    assert rows(wh, "stripe", "charges", "count(*), count(DISTINCT id)") == [(12, 12)]
    # It resumed after the last committed page instead of listing from the start.
    listing = [q for s, p, q, _ in stripe.requests if p == "/v1/charges" and s == 200]
    assert listing[ok_before]["starting_after"] == ["ch_8"]


def test_zendesk_cursor_exports_updates_and_deletions(open_wh) -> None:
    api = FakeZendesk()
    try:
        for i in range(5):
            api.put(
                "tickets",
                id=i,
                subject=f"Ticket {i}",
                status="open",
                via={"channel": "email"},
                tags=["a", "b"],
            )
        for i in range(3):
            api.put("users", id=100 + i, name=f"User {i}", active=True)
            api.put("organizations", id=200 + i, name=f"Org {i}", deleted_at=None)
        api.inject(Fault(500, times=1, path_contains="/tickets/"))  # transient, retried
        wh = open_wh()
        connector = ZendeskConnector(api.url, "admin@example.com", "tok", FAST)
        assert ObjectLoader(wh).sync(connector, "zendesk").status == "success"
        assert rows(wh, "zendesk", "tickets", "count(*)") == [(5,)]
        assert "via_channel" in wh.read_schema("zendesk")["tickets"]
        assert rows(wh, "zendesk", "organizations", "count(*)") == [(3,)]

        api.put("tickets", id=1, subject="Ticket 1 (edited)", status="solved")
        api.put("tickets", id=2, subject="Ticket 2", status="deleted")
        api.put("users", id=101, name="User 1", active=False)
        api.put("tickets", id=9, subject="New", status="new")
        assert ObjectLoader(wh).sync(connector, "zendesk").status == "success"
        tickets = {r[0]: r for r in rows(wh, "zendesk", "tickets", "id, subject, _deleted_at")}
        assert len(tickets) == 6
        assert tickets["1"][1] == "Ticket 1 (edited)" and tickets["1"][2] is None
        assert tickets["2"][2] is not None
        users = {r[0]: r[1] for r in rows(wh, "zendesk", "users", "id, _deleted_at")}
        assert users["101"] is not None and users["100"] is None
        # Basic auth with the API token, as Zendesk expects.
        assert all(h.get("Authorization", "").startswith("Basic ") for *_, h in api.requests)
    finally:
        api.stop()


def test_salesforce_query_more_incremental_and_is_deleted(open_wh) -> None:
    api = FakeSalesforce()
    try:
        for i in range(5):
            api.put(
                "Account",
                Id=f"001{i}",
                Name=f"Acme {i}",
                Industry="Retail",
                NumberOfEmployees=10 * i,
            )
        api.put(
            "Contact",
            Id="0031",
            AccountId="0010",
            FirstName="Ada",
            LastName="L",
            Email="ada@example.com",
        )
        wh = open_wh()
        connector = SalesforceConnector(api.url, "token", retry=FAST)
        report = ObjectLoader(wh).sync(connector, "salesforce", ["accounts", "contacts"])
        assert report.status == "success"
        assert rows(wh, "salesforce", "accounts", "count(*)") == [(5,)]
        columns = wh.read_schema("salesforce")["accounts"]
        assert {"name", "industry", "number_of_employees", "system_modstamp"} <= set(columns)
        assert "attributes_type" not in columns

        api.put("Account", Id="0012", Name="Acme 2 GmbH", Industry="Retail", NumberOfEmployees=5)
        api.delete("Account", "0013")
        report = ObjectLoader(wh).sync(connector, "salesforce", ["accounts"])
        accounts = {r[0]: r for r in rows(wh, "salesforce", "accounts", "id, name, _deleted_at")}
        assert len(accounts) == 5
        assert accounts["0012"][1] == "Acme 2 GmbH" and accounts["0013"][2] is not None
        # Incremental: the second sync asked only from the last committed SystemModstamp.
        queries = [q["q"][0] for s, p, q, _ in api.requests if p.endswith("/queryAll")]
        assert "1970-01-01" in queries[0] and "2026-11-01T10:00:0" in queries[-1]
    finally:
        api.stop()


def test_objects_from_an_archive_and_selective_sync(open_wh, tmp_path: Path) -> None:
    root = tmp_path / "export"
    write_ndjson(
        root / "products" / "001.ndjson",
        [
            {"id": "p1", "name": "Lamp", "price": 10, "dims": {"w": 1, "h": 2}, "secret_cost": 3},
            {"id": "p2", "name": "Desk", "price": 99, "dims": {"w": 5, "h": 3}, "secret_cost": 40},
        ],
        gz=False,
    )
    write_ndjson(root / "stores.ndjson", [{"id": 1, "city": "Lyon"}], gz=False)
    wh = open_wh()
    rules, issues = parse(
        "targets:\n  t:\n    shop:\n      collections: [stores]\n"
        "      properties:\n        products: [secret_*]\n",
        "selective_sync.yml",
    )
    assert not issues
    sync_filter = rules.filter_for("t", "shop")
    report = ObjectLoader(wh, sync_filter=sync_filter).sync(
        ObjectArchiveConnector(str(root)), "shop"
    )
    assert report.status == "success"
    tables = wh.read_schema("shop")
    assert set(tables) == {"products"}
    assert "secret_cost" not in tables["products"] and "dims_w" in tables["products"]

    write_ndjson(
        root / "products" / "002.ndjson",
        [
            {"id": "p1", "name": "Lamp XL", "price": 12},
            {"id": "p2", "_deleted": True},
        ],
        gz=False,
    )
    ObjectLoader(wh, sync_filter=rules.filter_for("t", "shop")).sync(
        ObjectArchiveConnector(str(root)), "shop"
    )
    products = {r[0]: r for r in rows(wh, "shop", "products", "id, name, _deleted_at")}
    assert products["p1"][1] == "Lamp XL" and products["p1"][2] is None
    assert products["p2"][2] is not None


def test_sluice_sync_runs_a_cloud_source_from_sluice_yml(
    tmp_path: Path, stripe: FakeStripe
) -> None:
    write_duckdb_profiles(tmp_path)
    (tmp_path / "sluice.yml").write_text(
        "version: 1\nprofiles: profiles.yml\nsources:\n  payments:\n    kind: stripe\n"
        f"    api_key: ${{SLUICE_TEST_STRIPE_KEY}}\n    base_url: {stripe.url}\n"
        "    collections: [customers, charges]\n"
    )
    env = {"SLUICE_TEST_STRIPE_KEY": "sk_live_do_not_print"}
    first = sluice("sync", "payments", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert "customers" in first.stdout and "charges" in first.stdout
    assert "sk_live_do_not_print" not in first.stdout + first.stderr
    replay = sluice(
        "replay", "payments", "--from", "2026-11-01", "--to", "2026-11-01", cwd=tmp_path, env=env
    )
    assert replay.returncode == 2 and "replay is for archives" in replay.stderr
    # Bad credentials: one sentence naming the source, exit 1, no secret.
    stripe.inject(Fault(401, times=-1))
    denied = sluice("sync", "payments", cwd=tmp_path, env=env)
    assert denied.returncode == 1
    assert "stripe: 401" in denied.stderr and "credentials" in denied.stderr
    assert "sk_live_do_not_print" not in denied.stderr


def test_kill_9_between_pages_then_rerun_has_no_duplicate_or_gap(
    tmp_path: Path, stripe: FakeStripe
) -> None:
    """A real `sluice sync` process killed while it waits for page 3 of charges."""
    import os
    import signal
    import subprocess
    import sys

    import duckdb

    for i in range(5, 12):
        stripe.create("charges", id=f"ch_{i}", amount=i, currency="usd")
    write_duckdb_profiles(tmp_path)
    (tmp_path / "sluice.yml").write_text(
        "version: 1\nsources:\n  payments:\n    kind: stripe\n    api_key: sk\n"
        f"    base_url: {stripe.url}\n    collections: [charges]\n"
        "    batch_lines: 1\n"  # commit every page
    )
    stripe.inject(Fault(200, times=1, path_contains="/v1/charges", after_ok=2, hang_s=60))
    child = subprocess.Popen(
        [sys.executable, "-m", "loader.cli.app", "sync", "payments"],
        cwd=tmp_path,
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert stripe.hanging.wait(60), "the sync never reached page 3"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as conn:
        # Two whole pages committed, with the cursor after them.
        committed = conn.execute("SELECT count(*) FROM payments.charges").fetchone()[0]
        cursor = conn.execute("SELECT cursor FROM _sluice.cursors").fetchone()[0]
    assert committed == 4 and '"starting_after":"ch_8"' in cursor
    ok_before = len([s for s, p, _, _ in stripe.requests if p == "/v1/charges" and s == 200])
    stripe.heal()
    rerun = subprocess.run(
        [sys.executable, "-m", "loader.cli.app", "sync", "payments"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rerun.returncode == 0, rerun.stderr
    with duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True) as conn:
        count, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT id) FROM payments.charges"
        ).fetchone()
    assert (count, distinct) == (12, 12)
    listing = [q for s, p, q, _ in stripe.requests if p == "/v1/charges" and s == 200]
    assert listing[ok_before]["starting_after"] == ["ch_8"]  # resumed, not restarted


def test_stripe_events_apply_only_to_their_own_object_type(open_wh, stripe: FakeStripe) -> None:
    """`customer.*` also matches `customer.subscription.*`, `charge.*` matches disputes and
    refunds: such events must not land in (or delete from) customers or charges."""
    stripe.create("subscriptions", id="sub_1", status="active", customer="cus_1")
    wh = open_wh()
    connector = StripeConnector("sk", stripe.url, FAST)
    assert ObjectLoader(wh).sync(connector, "stripe").status == "success"

    stripe.update("subscriptions", "sub_0", "customer.subscription.updated", status="past_due")
    stripe.update("subscriptions", "sub_1", "customer.subscription.deleted", status="canceled")
    dispute = {"id": "dp_0", "object": "dispute", "charge": "ch_1", "amount": 100}
    stripe.emit("charge.dispute.created", {**dispute, "created": stripe.tick()})
    refund = {"id": "re_1", "object": "refund", "charge": "ch_1", "status": "succeeded"}
    stripe.emit("charge.refund.updated", {**refund, "created": stripe.tick()})
    stripe.update("customers", "cus_3", "customer.updated", email="c3-new@example.com")
    stripe.update("charges", "ch_2", "charge.captured", paid=False)
    assert ObjectLoader(wh).sync(connector, "stripe").status == "success"

    customers = {r[0]: r[1:] for r in rows(wh, "stripe", "customers", "id, email, _deleted_at")}
    assert set(customers) == {f"cus_{i}" for i in range(7)}
    assert customers["cus_3"] == ("c3-new@example.com", None)
    assert all(deleted is None for _, deleted in customers.values())
    charges = {r[0]: r[1] for r in rows(wh, "stripe", "charges", "id, paid")}
    assert set(charges) == {f"ch_{i}" for i in range(5)} and charges["ch_2"] is False
    subs = {r[0]: r[1:] for r in rows(wh, "stripe", "subscriptions", "id, status, _deleted_at")}
    assert subs["sub_0"] == ("past_due", None)
    assert subs["sub_1"][0] == "canceled" and subs["sub_1"][1] is not None


def test_turning_a_property_off_keeps_the_values_already_loaded(
    open_wh, stripe: FakeStripe
) -> None:
    """Selective sync: a property turned off is not loaded from then on, and the values
    it already has in the warehouse are not overwritten (with NULL or anything else)."""
    wh = open_wh()
    connector = StripeConnector("sk", stripe.url, FAST)
    assert ObjectLoader(wh).sync(connector, "stripe", ["customers"]).status == "success"
    assert rows(wh, "stripe", "customers", "DISTINCT metadata_plan") == [("pro",)]

    rules, issues = parse(
        "targets:\n  t:\n    stripe:\n      properties:\n        customers: [metadata_*]\n",
        "selective_sync.yml",
    )
    assert not issues
    stripe.update(
        "customers", "cus_1", "customer.updated", email="c1@new.example", metadata={"plan": "free"}
    )
    stripe.create("customers", id="cus_new", email="n@example.com", metadata={"plan": "team"})
    loader = ObjectLoader(wh, sync_filter=rules.filter_for("t", "stripe"))
    assert loader.sync(connector, "stripe", ["customers"]).status == "success"

    assert "metadata_plan" in wh.read_schema("stripe")["customers"]  # the column stays
    by_id = {r[0]: r[1:] for r in rows(wh, "stripe", "customers", "id, email, metadata_plan")}
    assert by_id["cus_1"] == ("c1@new.example", "pro")  # updated, but its plan untouched
    assert by_id["cus_0"] == ("c0@example.com", "pro")
    assert by_id["cus_new"] == ("n@example.com", None)  # turned off: not loaded


def test_retry_after_is_honoured_and_capped(stripe: FakeStripe) -> None:
    """A 429's Retry-After is waited for, but never longer than the configured cap, on
    every retry (urllib3 rebuilds its Retry object for each attempt)."""
    import time

    from loader.sources.cloud.engine import ApiClient

    url = stripe.url + "/v1/customers"
    policy = RetryPolicy(attempts=4, backoff_s=0.01, backoff_max_s=0.01, jitter_s=0.0)
    # Within the cap: the server's 1 s is honoured (the backoff alone would be 0.01 s).
    stripe.inject(Fault(429, times=1, retry_after="1"))
    started = time.monotonic()
    assert ApiClient("stripe", {}, policy).get_json(url)["data"]
    assert 0.95 <= time.monotonic() - started < 3

    # Over the cap: two 429s asking for 5 s each are waited for 0.3 s each.
    stripe.heal()
    stripe.requests.clear()
    capped = RetryPolicy(
        attempts=4, backoff_s=0.01, backoff_max_s=0.01, jitter_s=0.0, retry_after_cap_s=0.3
    )
    stripe.inject(Fault(429, times=2, retry_after="5"))
    started = time.monotonic()
    assert ApiClient("stripe", {}, capped).get_json(url)["data"]
    elapsed = time.monotonic() - started
    assert stripe.statuses() == [429, 429, 200]
    assert 0.55 <= elapsed < 2.5, elapsed


# --- the failure scenarios of issue 5 for Zendesk and Salesforce ----------------------
# Each case: a fake API with 7 objects of one collection (pages of 2), the connector,
# and how to tell that a resumed sync continued from the saved cursor.
class _Case:
    def __init__(self, name: str) -> None:
        self.name = name
        if name == "zendesk":
            self.api: Any = FakeZendesk()
            for i in range(7):
                self.api.put("tickets", id=i, subject=f"Ticket {i}", status="open")
            self.collection, self.table, self.path = "tickets", "tickets", "/tickets/"
        else:
            self.api = FakeSalesforce()
            for i in range(7):
                self.api.put("Account", Id=f"001{i}", Name=f"Acme {i}", Industry="Retail")
            self.collection, self.table, self.path = "accounts", "accounts", "/services/data"

    def connector(self, retry: RetryPolicy = FAST) -> Any:
        if self.name == "zendesk":
            return ZendeskConnector(self.api.url, "admin@example.com", "tok", retry)
        return SalesforceConnector(self.api.url, "token", retry=retry)

    def sluice_yml(self) -> str:
        """The source as `sluice sync` reads it, committing every page."""
        if self.name == "zendesk":
            settings = f"kind: zendesk\n    url: {self.api.url}\n    email: a@example.com\n"
            settings += "    api_token: tok\n"
        else:
            settings = f"kind: salesforce\n    instance_url: {self.api.url}\n"
            settings += "    access_token: token\n"
        return (
            f"version: 1\nsources:\n  crm:\n    {settings}"
            f"    collections: [{self.collection}]\n    batch_lines: 1\n"
        )

    def ok_requests(self) -> list[dict[str, list[str]]]:
        return [q for s, p, q, _ in self.api.requests if self.path in p and s == 200]

    def assert_resumed_from(self, cursor: dict[str, Any], first: dict[str, list[str]]) -> None:
        """`first` is the first request of the rerun; `cursor` the one saved before."""
        if self.name == "zendesk":
            assert first["cursor"] == [cursor["cursor"]] and "start_time" not in first
        else:
            # Records up to the 4th (two pages) were committed: the rerun asks from its
            # SystemModstamp, not from 1970.
            fourth = sorted(r["SystemModstamp"] for r in self.api.records["Account"])[3]
            assert cursor["modstamp"] == fourth and cursor["seen"] == ["0013"]
            assert f"SystemModstamp >= {fourth[:19]}Z" in first["q"][0]


@pytest.fixture(params=["zendesk", "salesforce"])
def case(request: pytest.FixtureRequest) -> Iterator[_Case]:
    c = _Case(request.param)
    yield c
    c.api.stop()


def test_429_storm_is_ridden_out(open_wh, case: _Case) -> None:
    case.api.inject(Fault(429, times=5, path_contains=case.path, retry_after="0"))
    wh = open_wh()
    report = ObjectLoader(wh).sync(case.connector(), case.name, [case.collection])
    assert report.status == "success"
    assert case.api.statuses(case.path)[:6] == [429] * 5 + [200]
    assert rows(wh, case.name, case.table, "count(*), count(DISTINCT id)") == [(7, 7)]


def test_500_mid_pagination_then_resume_with_no_duplicate_or_gap(open_wh, case: _Case) -> None:
    wh = open_wh()
    # Two pages succeed, then every request (and every retry) gets a 500.
    case.api.inject(Fault(500, times=-1, path_contains=case.path, after_ok=2))
    with pytest.raises(SourceError, match="500"):
        ObjectLoader(wh, batch_objects=1).sync(case.connector(), case.name, [case.collection])
    assert rows(wh, case.name, case.table, "count(*)") == [(4,)]  # two pages of two
    cursor = orjson.loads(wh.read_cursors(case.name)[case.collection])
    ok_before = len(case.ok_requests())

    case.api.heal()
    resumed = ObjectLoader(wh, batch_objects=1).sync(case.connector(), case.name)
    assert resumed.status == "success"
    assert rows(wh, case.name, case.table, "count(*), count(DISTINCT id)") == [(7, 7)]
    case.assert_resumed_from(cursor, case.ok_requests()[ok_before])


def test_kill_9_between_pages_then_rerun(tmp_path: Path, case: _Case) -> None:
    """A real `sluice sync` process killed while it waits for page 3, then run again."""
    import signal
    import subprocess
    import sys

    import duckdb

    from loader.warehouses.duckdb import DuckDBWarehouse

    write_duckdb_profiles(tmp_path)
    (tmp_path / "sluice.yml").write_text(case.sluice_yml())
    case.api.inject(Fault(200, times=1, path_contains=case.path, after_ok=2, hang_s=60))
    child = subprocess.Popen(
        [sys.executable, "-m", "loader.cli.app", "sync", "crm"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert case.api.hanging.wait(60), "the sync never reached page 3"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    database = str(tmp_path / "wh.duckdb")
    with duckdb.connect(database, read_only=True) as conn:
        committed = conn.execute(f"SELECT count(*) FROM crm.{case.table}").fetchone()[0]
        cursor = orjson.loads(conn.execute("SELECT cursor FROM _sluice.cursors").fetchone()[0])
    assert committed == 4
    ok_before = len(case.ok_requests())
    case.api.heal()
    # The rerun in-process (the same loader `sluice sync` drives), to keep the test short.
    wh = DuckDBWarehouse("local", database)
    try:
        rerun = ObjectLoader(wh, batch_objects=1).sync(case.connector(), "crm")
        assert rerun.status == "success"
        assert rows(wh, "crm", case.table, "count(*), count(DISTINCT id)") == [(7, 7)]
    finally:
        wh.close()
    case.assert_resumed_from(cursor, case.ok_requests()[ok_before])
