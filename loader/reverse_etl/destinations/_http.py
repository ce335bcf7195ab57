"""HTTP delivery shared by the webhook and Segment destinations (requests).

Retries 429 and 5xx (and connection errors) with exponential backoff, honouring
Retry-After; splits a batch the receiver rejects as malformed (400/413/422) into single
records so one bad record does not hold back the others; asks the runner to stop on
401/403/404/405, which no retry or split can fix.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson
import requests
from pydantic import Field

from loader.http_retry import retry_after
from loader.reverse_etl.destinations import DestinationConfig, Record, SendResult

SPLIT_STATUSES = {400, 413, 422}
FATAL_STATUSES = {401, 403, 404, 405}


class HttpConfig(DestinationConfig):
    """Retry settings every HTTP destination accepts."""

    batch_size: int = Field(default=100, ge=1, le=10_000)
    max_attempts: int = Field(default=5, ge=1, le=20, description="per batch, first try included")
    backoff_seconds: float = Field(default=0.5, ge=0, le=60, description="doubles per retry")
    max_backoff_seconds: float = Field(default=30.0, ge=0, le=600)
    timeout_seconds: float = Field(default=30.0, gt=0, le=600)


@dataclass
class Outcome:
    ok: bool
    status: int | None
    attempts: int
    reason: str


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, date | datetime):
        return value.isoformat()
    return str(value)


def dumps(payload: Any) -> bytes:
    return orjson.dumps(payload, default=_default)


def post_json(
    session: requests.Session,
    url: str,
    body: bytes,
    config: HttpConfig,
    headers: dict[str, str] | None = None,
    auth: tuple[str, str] | None = None,
    scrub: Callable[[str], str] = str,
) -> Outcome:
    """POST with retries; never raises for HTTP or network failures. A receiver's error
    text is scrubbed of secrets before it is cut to length (a cut could split one)."""
    reason = ""
    status: int | None = None
    for attempt in range(1, config.max_attempts + 1):
        wait: float | None = None
        try:
            response = session.post(
                url,
                data=body,
                headers={"Content-Type": "application/json", **(headers or {})},
                auth=auth,
                timeout=config.timeout_seconds,
            )
        except requests.RequestException as exc:
            status, reason = None, f"connection failed ({type(exc).__name__})"
        else:
            status = response.status_code
            if 200 <= status < 300:
                return Outcome(True, status, attempt, "")
            reason = f"HTTP {status}"
            if status != 429 and status < 500:
                detail = scrub(response.text.strip().replace("\n", " "))[:200]
                return Outcome(False, status, attempt, f"{reason}: {detail}" if detail else reason)
            wait = retry_after(response.headers.get("Retry-After"))
        if attempt == config.max_attempts:
            break
        if wait is None:
            wait = config.backoff_seconds * 2 ** (attempt - 1) * random.uniform(0.9, 1.1)
        time.sleep(min(wait, config.max_backoff_seconds))
    return Outcome(
        False, status, config.max_attempts, f"{reason} after {config.max_attempts} attempts"
    )


def deliver(
    records: Sequence[Record], post: Callable[[Sequence[Record]], Outcome], what: str
) -> SendResult:
    """Send a batch; on a malformed-batch answer, send its records one by one."""
    outcome = post(records)
    if outcome.ok:
        return SendResult()
    if outcome.status in SPLIT_STATUSES and len(records) > 1:
        result = SendResult()
        for i, record in enumerate(records):
            single = post([record])
            if single.ok:
                continue
            result.failed[record.seq] = single.reason
            if single.status in FATAL_STATUSES:
                # Keep what was accepted so far; the rest waits for the next run.
                result.failed.update({r.seq: single.reason for r in records[i + 1 :]})
                result.stop = _fatal(single, what)
                break
        return result
    stop = _fatal(outcome, what) if outcome.status in FATAL_STATUSES else None
    return SendResult({r.seq: outcome.reason for r in records}, stop)


def _fatal(outcome: Outcome, what: str) -> str:
    return f"{what} answered HTTP {outcome.status}; check its URL and credentials"
