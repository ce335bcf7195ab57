"""What every API connector shares: one HTTP client that retries what a retry can fix,
bounds every request and every sync in time, names the endpoint in every error and
never lets a secret into one; and the page/cursor contract the object loader drives.

Retried, with exponential backoff and jitter: 429 (its Retry-After honoured, capped),
500/502/503/504, a connection that fails or drops mid-body, a body that is not JSON.
Bounded: each request (its retries and waits included) by `request_s`, the whole sync
by `sync_s`, a silent server by `idle_s` per read; a watchdog cuts the connection at the
deadline and the body is read chunk by chunk against it, so a server dripping a byte at
a time (headers or body) cannot stretch it.

A connector only describes its endpoints: given a collection and the cursor saved after
the last committed page, it yields pages, each carrying the cursor to save with it, so a
crash between pages resumes exactly where the last commit left off.
"""

from __future__ import annotations

import random
import socket
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from loader.http_retry import retry_after
from loader.scrub import Scrubber


class SourceError(Exception):
    """An API failure a user can act on; names the source and never carries a secret."""


@dataclass
class ObjectPage:
    """Objects of one collection fetched together, and where to resume after them."""

    objects: list[dict[str, Any]]
    cursor: dict[str, Any]
    deleted: set[str] = field(default_factory=set)  # ids (of `objects` or not) deleted upstream


class Connector(Protocol):
    name: str
    collections: tuple[str, ...]

    def pages(self, collection: str, cursor: dict[str, Any] | None) -> Iterator[ObjectPage]: ...


@dataclass(frozen=True)
class Boundary:
    """An inclusive time cursor and the ids already taken at that very time.

    Asking for `> newest` loses what is created in the newest second after the listing
    (APIs stamp to the second); asking for `>= newest` fetches the boundary again. So a
    cursor asks `>=` and remembers the ids it took at `at`, which are skipped: nothing
    lost, nothing applied twice (a rerun with no change loads nothing)."""

    at: Any = None  # comparable: epoch seconds, an ISO instant...
    seen: frozenset[str] = frozenset()

    @classmethod
    def of(cls, state: Any, legacy: Any = None) -> Boundary:
        """From a saved cursor; `legacy` is an exclusive `> x` cursor of older versions
        (taken as inclusive with nothing seen: the boundary is fetched once more)."""
        if isinstance(state, dict):
            return cls(state.get("at"), frozenset(str(i) for i in state.get("seen") or ()))
        return cls(legacy)

    def fresh(self, at: Any, oid: Any) -> bool:
        """Not taken yet: newer than the boundary, or at it and not seen."""
        if self.at is None or at > self.at:
            return True
        return at == self.at and str(oid) not in self.seen

    def after(self, taken: Iterable[tuple[Any, Any]]) -> Boundary:
        """The boundary once these (time, id) items are taken too."""
        at, seen = self.at, set(self.seen)
        for when, oid in taken:
            if at is None or when > at:
                at, seen = when, {str(oid)}
            elif when == at:
                seen.add(str(oid))
        return Boundary(at, frozenset(seen))

    def to_state(self) -> dict[str, Any]:
        return {"at": self.at, "seen": sorted(self.seen)}


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    jitter_s: float = 0.25
    retry_after_cap_s: float = 60.0


DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class Deadlines:
    """How long a request (retries and waits included) and a whole sync may take;
    `request_timeout_seconds` and `sync_budget_seconds` of a source in sluice.yml."""

    request_s: float = 300.0
    sync_s: float = 4 * 3600.0
    connect_s: float = 10.0
    idle_s: float = 60.0  # the longest silence between two bytes of an answer


DEFAULT_DEADLINES = Deadlines()
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_CHUNK = 64 * 1024


class _Retryable(Exception):
    """One attempt failed in a way another attempt may not: `reason` says how."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait


class _OutOfTime(Exception):
    pass


class _WatchedAdapter(HTTPAdapter):
    """An adapter that knows the sockets of its connections, so a watchdog can cut a
    request that outlives its deadline anywhere, also while the status line and headers
    trickle in (which no read timeout bounds: each byte resets it)."""

    def __init__(self) -> None:
        self.sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        sockets = self.sockets

        class Watched(HTTPConnection):
            def connect(self) -> None:
                super().connect()
                sockets.add(self.sock)

        class WatchedTls(HTTPSConnection):
            def connect(self) -> None:
                super().connect()
                sockets.add(self.sock)

        class Pool(HTTPConnectionPool):
            ConnectionCls = Watched

        class TlsPool(HTTPSConnectionPool):
            ConnectionCls = WatchedTls

        # an instance attribute: the module's own mapping stays as it is
        self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": TlsPool}

    def cut(self) -> None:
        """Shut down every socket (one request is in flight at a time per client)."""
        for sock in list(self.sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class ApiClient:
    """One source's HTTP client. Header values and Basic credentials given here are the
    source's secrets: they are scrubbed, in every derived form, from every error."""

    def __init__(
        self,
        source: str,
        headers: dict[str, str] | None = None,
        policy: RetryPolicy = DEFAULT_RETRY,
        auth: tuple[str, str] | None = None,
        deadlines: Deadlines = DEFAULT_DEADLINES,
        secrets: Iterable[str] = (),
    ) -> None:
        self.source = source
        self.policy = policy
        self.deadlines = deadlines
        self.session = requests.Session()
        self._adapter = _WatchedAdapter()
        self.session.mount("http://", self._adapter)
        self.session.mount("https://", self._adapter)
        self.session.headers.update(headers or {})
        self.session.auth = auth
        self.scrub = Scrubber(*(headers or {}).values(), *secrets)
        if auth is not None:
            self.scrub.add_basic(*auth)
        self._sync_ends: float | None = None

    def begin_sync(self) -> None:
        """Start the sync budget's clock (else it starts at the first request)."""
        self._sync_ends = time.monotonic() + self.deadlines.sync_s

    def get_json(self, url: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """GET and decode, with retries, within the deadlines; one clear sentence
        naming the endpoint when it finally fails."""
        now = time.monotonic()
        if self._sync_ends is None:
            self._sync_ends = now + self.deadlines.sync_s
        request_ends = now + self.deadlines.request_s
        deadline = min(request_ends, self._sync_ends)
        where = f"GET {_path(url)}"
        reason = ""
        attempts = max(1, self.policy.attempts)
        for attempt in range(1, attempts + 1):
            try:
                return self._attempt(url, params, deadline, where)
            except _Retryable as failure:
                reason = failure.reason
                wait = failure.wait
            except _OutOfTime:
                raise self._out_of_time(where, request_ends) from None
            if attempt == attempts:
                break
            if wait is None:
                wait = min(
                    self.policy.backoff_s * 2 ** (attempt - 1), self.policy.backoff_max_s
                ) + random.uniform(0, self.policy.jitter_s)
            if time.monotonic() + wait >= deadline:
                raise self._out_of_time(where, request_ends, reason) from None
            time.sleep(wait)
        raise SourceError(
            self.scrub(f"{self.source}: {reason} from {where} after {attempts} attempts")
        )

    def _attempt(
        self, url: str, params: dict[str, Any] | None, deadline: float, where: str
    ) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _OutOfTime
        watchdog = threading.Timer(remaining, self._adapter.cut)
        watchdog.daemon = True
        watchdog.start()
        try:
            return self._request(url, params, deadline, where, remaining)
        finally:
            watchdog.cancel()

    def _request(
        self,
        url: str,
        params: dict[str, Any] | None,
        deadline: float,
        where: str,
        remaining: float,
    ) -> dict[str, Any]:
        timeout = (min(self.deadlines.connect_s, remaining), min(self.deadlines.idle_s, remaining))
        try:
            response = self.session.get(url, params=params, timeout=timeout, stream=True)
        except requests.RequestException as exc:
            if time.monotonic() >= deadline:
                raise _OutOfTime from None
            raise _Retryable(f"connection failed ({type(exc).__name__})") from None
        with response:
            status = response.status_code
            if status in RETRY_STATUSES:
                wait = None
                if status == 429 or response.headers.get("Retry-After"):
                    after = retry_after(response.headers.get("Retry-After"))
                    if after is not None:
                        wait = min(after, self.policy.retry_after_cap_s)
                raise _Retryable(f"{status}", wait)
            body = self._body(response, deadline)
        if status in (401, 403):
            raise SourceError(
                f"{self.source}: {status} from {where}: check the credentials in sluice.yml "
                "(and the environment variables they reference)"
            )
        if status >= 400:
            text = self.scrub(body.decode("utf-8", "replace").strip().replace("\n", " "))
            raise SourceError(self.scrub(f"{self.source}: {status} from {where}: {text[:200]}"))
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _Retryable(f"a body that is not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise _Retryable(f"a JSON {type(data).__name__} where an object was expected")
        return data

    def _body(self, response: requests.Response, deadline: float) -> bytes:
        """The whole body, read against the deadline (not just per read)."""
        chunks: list[bytes] = []
        raw = response.raw
        sock = _socket_of(raw)
        # read1 returns what one read brought (urllib3 >= 2.3); `read` waits for the
        # whole chunk, which the watchdog still cuts at the deadline.
        read = getattr(raw, "read1", None) or raw.read
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _OutOfTime
            if sock is not None:
                try:
                    sock.settimeout(min(self.deadlines.idle_s, remaining))
                except OSError:  # closed once the body was read: nothing left to bound
                    sock = None
            try:
                chunk = read(_CHUNK, decode_content=True)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if time.monotonic() >= deadline:
                    raise _OutOfTime from None
                name = type(exc).__name__
                if isinstance(exc, urllib3.exceptions.ReadTimeoutError | TimeoutError):
                    raise _Retryable(f"no data for {self.deadlines.idle_s:g} s ({name})") from None
                raise _Retryable(f"a connection dropped mid-body ({name})") from None
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def _out_of_time(self, where: str, request_ends: float, reason: str = "") -> SourceError:
        tail = "; what was committed stands and the next sync resumes from it"
        last = f" (last failure: {reason})" if reason else ""
        ends = self._sync_ends if self._sync_ends is not None else request_ends
        if ends <= request_ends:
            text = (
                f"{self.source}: the sync used up its time budget of "
                f"{self.deadlines.sync_s:g} s (sync_budget_seconds in sluice.yml) during "
                f"{where}{last}{tail}"
            )
        else:
            text = (
                f"{self.source}: {where} did not complete within the request deadline of "
                f"{self.deadlines.request_s:g} s (request_timeout_seconds in sluice.yml){last}"
                f"{tail}"
            )
        return SourceError(self.scrub(text))


def _socket_of(raw: Any) -> socket.socket | None:
    """The socket under a streamed urllib3 response, to bound each read by what is
    left of the deadline (http.client keeps it under the buffered reader)."""
    for path in (("_fp", "fp", "raw", "_sock"), ("connection", "sock")):
        obj = raw
        for name in path:
            obj = getattr(obj, name, None)
            if obj is None:
                break
        if isinstance(obj, socket.socket):
            return obj
    return None


def _path(url: str) -> str:
    """The URL without its query string (which may hold tokens)."""
    return url.split("?", 1)[0]
