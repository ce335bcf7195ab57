"""What every API connector shares: an HTTP session that retries rate limits (429 with
Retry-After, capped) and transient 5xx with exponential backoff and jitter, and the
page/cursor contract the object loader drives.

A connector only describes its endpoints: given a collection and the cursor saved
after the last committed page, it yields pages, each carrying the cursor to save with
it, so a crash between pages resumes exactly where the last commit left off.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry


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


class _CappedRetry(Retry):
    """urllib3's retry, with the server's Retry-After honoured up to a cap.

    urllib3 makes a fresh Retry (`new()`) for every attempt, passing only its own
    settings, so the cap is an __init__ argument that `new()` hands on; an attribute set
    on the first object alone would be lost at the first retry."""

    def __init__(self, *args: Any, retry_after_cap: float = 60.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after_cap = retry_after_cap

    def new(self, **kw: Any) -> _CappedRetry:
        kw.setdefault("retry_after_cap", self.retry_after_cap)
        return super().new(**kw)

    def get_retry_after(self, response: Any) -> float | None:
        after = super().get_retry_after(response)
        return None if after is None else min(after, self.retry_after_cap)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    jitter_s: float = 0.25
    retry_after_cap_s: float = 60.0


DEFAULT_RETRY = RetryPolicy()


def http_session(
    headers: dict[str, str], policy: RetryPolicy = DEFAULT_RETRY, auth: Any = None
) -> requests.Session:
    retry = _CappedRetry(
        total=policy.attempts,
        connect=policy.attempts,
        read=policy.attempts,
        status=policy.attempts,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=frozenset({"GET", "POST"}),
        backoff_factor=policy.backoff_s,
        backoff_max=policy.backoff_max_s,
        backoff_jitter=policy.jitter_s,
        respect_retry_after_header=True,
        raise_on_status=False,
        retry_after_cap=policy.retry_after_cap_s,
    )
    session = requests.Session()
    session.headers.update(headers)
    session.auth = auth
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def get_json(
    session: requests.Session, source: str, url: str, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """GET with the session's retries; one clear sentence when it finally fails."""
    try:
        response = session.get(url, params=params, timeout=60)
    except requests.RequestException as exc:
        raise SourceError(f"{source}: cannot reach {_path(url)}: {type(exc).__name__}") from None
    if response.status_code in (401, 403):
        raise SourceError(
            f"{source}: {response.status_code} from {_path(url)}: check the credentials "
            "in sluice.yml (and the environment variables they reference)"
        )
    if response.status_code >= 400:
        raise SourceError(
            f"{source}: {response.status_code} from {_path(url)} after retries: "
            f"{response.text[:200]}"
        )
    return response.json()


def _path(url: str) -> str:
    """The URL without its query string (which may hold tokens)."""
    return url.split("?", 1)[0]
