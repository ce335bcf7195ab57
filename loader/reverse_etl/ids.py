"""The record id rule, in one place: an id names one change sent, never two.

A receiver may drop a record whose id it has already applied (Segment does so with
`messageId`), so an id must not come back for a later change that happens to look the
same (a row that goes free -> pro -> free, a row deleted and re-created as it was). It
must come back, though, for a re-send of the same change: a batch the receiver applied
while the sender saw a timeout or crashed before recording the acceptance.

So the warehouse keeps, per model and key, the last change *sent* (op, row hash, id),
written before the batch leaves. A change equal to that one is a re-send and keeps its
id; any other change gets a new id, derived from the run that first sends it.
"""

from __future__ import annotations

import hashlib

# (op, row hash, id) of the last change sent for a key
SentChange = tuple[str, str, str]


def new_record_id(model: str, key: str, op: str, row_hash: str | None, run_id: str) -> str:
    """Unique per (run, model, key): a key has at most one change in a run's change set."""
    text = f"{run_id}\x1f{model}\x1f{op}\x1f{key}\x1f{row_hash}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def record_id(
    model: str,
    key: str,
    op: str,
    row_hash: str | None,
    run_id: str,
    last_sent: SentChange | None,
) -> tuple[str, bool]:
    """(id, is_new): the id of the last change sent for this key if this change is that
    one again (not yet acknowledged), else a new id for this run."""
    if last_sent is not None and last_sent[0] == op and last_sent[1] == (row_hash or ""):
        return last_sent[2], False
    return new_record_id(model, key, op, row_hash, run_id), True
