"""A realistic Segment archive generator, for `sluice init`, tests and the benchmark.

Deterministic for a seed and a first day: a mix of call types, ~30 event names, nested
properties, arrays, duplicates and type conflicts, written in Segment's S3 log layout.
By default the archive ends yesterday (UTC), so a project made by `sluice init` is fresh:
its freshness checks pass and its newest daily partitions hold data.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

EVENTS = [
    "Order Completed",
    "Product Viewed",
    "Product Added",
    "Product Removed",
    "Cart Viewed",
    "Checkout Started",
    "Checkout Step Viewed",
    "Payment Info Entered",
    "Coupon Applied",
    "Coupon Denied",
    "Products Searched",
    "Product List Viewed",
    "Product Clicked",
    "Promotion Viewed",
    "Promotion Clicked",
    "Signed Up",
    "Signed In",
    "Signed Out",
    "Account Created",
    "Trial Started",
    "Subscription Started",
    "Subscription Cancelled",
    "Invite Sent",
    "Video Playback Started",
    "Video Playback Completed",
    "Email Opened",
    "Email Link Clicked",
    "Application Opened",
    "Application Installed",
    "Feedback Submitted",
]
PLANS = ["free", "pro", "enterprise"]


def archive_days(events: int, files_per_day: int = 4, events_per_file: int = 5000) -> int:
    """How many received days `write_archive` spreads `events` over."""
    files = max(1, -(-events // events_per_file))
    return -(-files // files_per_day)


def default_first_day(days: int, today: date | None = None) -> date:
    """The first day of a `days`-day archive whose last day is yesterday (UTC)."""
    today = today or datetime.now(timezone.utc).date()
    return today - timedelta(days=days)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SampleGenerator:
    def __init__(
        self,
        seed: int = 7,
        users: int = 500,
        duplicate_rate: float = 0.02,
        base_time: datetime | None = None,
    ) -> None:
        """`base_time`: when the first message was received (default: midnight UTC,
        a day ago)."""
        self.base_time = base_time or _midnight(default_first_day(1))
        self.rng = random.Random(seed)
        self.users = users
        self.duplicate_rate = duplicate_rate
        self._recent: list[dict[str, Any]] = []
        self._n = 0

    def _context(self, user: int) -> dict[str, Any]:
        r = self.rng
        return {
            "library": {"name": "analytics.js", "version": "4.1.0"},
            "ip": f"10.0.{user % 250}.{r.randint(1, 250)}",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64)",
            "locale": "en-US",
            "page": {"path": f"/p/{r.randint(1, 40)}", "title": "Shop"},
            "campaign": {"source": r.choice(["google", "newsletter", "twitter"]), "medium": "cpc"},
        }

    def _properties(self, event: str) -> dict[str, Any]:
        r = self.rng
        props: dict[str, Any] = {"revenue": round(r.uniform(1, 500), 2), "currency": "USD"}
        if event.startswith("Order") or event.startswith("Checkout"):
            props["products"] = [
                {"product_id": f"p{r.randint(1, 99)}", "price": r.randint(1, 99)}
                for _ in range(r.randint(1, 3))
            ]
            props["order_id"] = f"o{r.randint(1, 10**6)}"
        props["shipping"] = {"method": r.choice(["ground", "air"]), "cost": r.randint(0, 20)}
        # Occasional type conflicts: a quantity that is sometimes a float or a string.
        roll = r.random()
        props["quantity"] = r.randint(1, 5) if roll < 0.95 else (2.5 if roll < 0.98 else "many")
        props["in_stock"] = r.random() < 0.9
        return props

    def message(self, received: datetime | None = None) -> dict[str, Any]:
        """One message; a duplicate (a retried send) repeats an earlier one verbatim."""
        r = self.rng
        if self._recent and r.random() < self.duplicate_rate:
            return r.choice(self._recent)
        self._n += 1
        user = r.randint(1, self.users)
        if received is None:
            received = self.base_time + timedelta(seconds=self._n * 3 + r.randint(0, 2))
        skew = timedelta(seconds=r.randint(-30, 30))
        original = received - timedelta(seconds=r.randint(0, 5)) + skew
        sent = received - timedelta(milliseconds=r.randint(50, 900)) + skew
        msg: dict[str, Any] = {
            "messageId": f"m-{self._n:09d}-{r.getrandbits(32):08x}",
            "anonymousId": f"anon-{user}",
            "userId": f"user-{user}" if r.random() < 0.8 else None,
            "receivedAt": _iso(received),
            "sentAt": _iso(sent),
            "originalTimestamp": _iso(original),
            "context": self._context(user),
            "integrations": {},
            "writeKey": "sample-write-key",
            "version": 2,
            "channel": "client",
        }
        kind = r.choices(
            ["track", "page", "identify", "screen", "group", "alias"], [60, 25, 8, 4, 2, 1]
        )[0]
        msg["type"] = kind
        if kind == "track":
            msg["event"] = r.choice(EVENTS)
            msg["properties"] = self._properties(msg["event"])
        elif kind in ("page", "screen"):
            msg["name"] = r.choice(["Home", "Product", "Checkout", "Docs"])
            msg["category"] = r.choice(["Shop", "Docs", None])
            msg["properties"] = {
                "url": f"https://example.com/p/{r.randint(1, 40)}",
                "path": f"/p/{r.randint(1, 40)}",
                "title": "Shop",
                "referrer": r.choice(["https://google.com", ""]),
            }
        elif kind == "identify":
            msg["userId"] = f"user-{user}"
            msg["traits"] = {
                "email": f"user{user}@example.com",
                "plan": r.choice(PLANS),
                "logins": r.randint(1, 200),
                "address": {"city": r.choice(["Berlin", "Lyon", "Austin"]), "country": "DE"},
                "createdAt": _iso(self.base_time - timedelta(days=user % 300)),
            }
        elif kind == "group":
            msg["groupId"] = f"acct-{user % 40}"
            msg["traits"] = {
                "name": f"Account {user % 40}",
                "employees": r.randint(1, 5000),
                "industry": r.choice(["retail", "saas"]),
            }
        else:
            msg["previousId"] = f"anon-{user}"
            msg["userId"] = f"user-{user}"
        if len(self._recent) < 1000:
            self._recent.append(msg)
        else:
            self._recent[r.randrange(1000)] = msg
        return msg

    def messages(self, n: int) -> Iterator[dict[str, Any]]:
        for _ in range(n):
            yield self.message()


def write_archive(
    root: Path,
    events: int,
    source_id: str = "sample-source",
    files_per_day: int = 4,
    events_per_file: int = 5000,
    seed: int = 7,
    malformed: bool = True,
    first_day: date | None = None,
) -> list[Path]:
    """Write Segment's `segment-logs/<source-id>/<day-ms>/*.gz` layout; returns the files.

    Each file's messages were received on its folder's day, spread evenly over the day.
    The days start at `first_day` (default: so that the last one is yesterday, UTC); the
    content is the same for the same seed and first day.
    """
    if first_day is None:
        first_day = default_first_day(archive_days(events, files_per_day, events_per_file))
    base = _midnight(first_day)
    gen = SampleGenerator(seed=seed, base_time=base)
    written: list[Path] = []
    n = 0
    file_index = 0
    step = 86_000 / (files_per_day * events_per_file)  # seconds; leaves room for jitter
    while n < events:
        count = min(events_per_file, events - n)
        day = base + timedelta(days=file_index // files_per_day)
        day_ms = int(day.timestamp() * 1000)
        folder = root / "segment-logs" / source_id / str(day_ms)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{day_ms}.{file_index:05d}.gz"
        # mtime=0: the same messages give the same bytes, whenever they are written.
        with gzip.GzipFile(path, "wb", compresslevel=1, mtime=0) as out:
            first = (file_index % files_per_day) * events_per_file
            for i in range(count):
                received = day + timedelta(seconds=(first + i) * step)
                out.write(orjson.dumps(gen.message(received)))
                out.write(b"\n")
                if malformed and file_index == 0 and i == 10:
                    out.write(b'{"type": "track", "event": "Broken"\n')
        written.append(path)
        n += count
        file_index += 1
    return written
