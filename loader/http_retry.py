"""Retry-After parsing shared by the cloud sources' HTTP engine and the reverse-ETL
HTTP destinations, so both honour a server's wait the same way."""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import parsedate_to_datetime


def retry_after(header: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); None when
    absent or unreadable, so the caller falls back to its own backoff. A date without
    a zone is read as UTC (HTTP dates are GMT), never as the machine's local time."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
