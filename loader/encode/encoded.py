"""Rows encoded for a warehouse's bulk format by the reader processes themselves.

Handing a batch to the loading process as Python tuples costs a pickle, an unpickle and
a second pass to format each value for COPY; encoded bytes cross the pipe nearly free
and the loading process only streams them. The price is that a reader types the columns
new to the table from its own file alone: it sends its evidence along, the loader
decides the batch's types from all files' evidence in archive order (exactly what it
would decide from the whole batch), and a chunk typed differently from that decision is
laid out again by the loader from the rows as read, which a chunk with new columns
carries along (a new column's first values can disagree between the files of its first
batch; once the table has the column, readers type it as the table does).
"""

from __future__ import annotations

import pickle
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import compress, count, repeat
from operator import sub
from typing import Any, Protocol

from loader.encode.row_layout import lay_out_columns
from loader.rules.normalize import RESCUED_COLUMN, TableChunk
from loader.rules.schema import ColumnEvidence, ColumnType, column_evidence

# What an encoder takes: the (name, type) of each column, and its values column by column.
EncoderColumns = Sequence[tuple[str, ColumnType]]
EncoderValues = Sequence[Iterable[Any]]


class RowEncoder(Protocol):
    """A warehouse's bulk row format (picklable: it travels to reader processes).

    An encoder whose `sliceable` attribute is false (Arrow IPC) writes payloads that
    cannot be cut at row ends; its chunks are cut as slices of the decoded table."""

    def encode(
        self, columns: EncoderColumns, values: EncoderValues, rows: int
    ) -> tuple[bytes, list[int]]:
        """The rows of these columns (`values` column by column, as laid out by
        loader.encode.row_layout) as one payload, and where each row ends in it, so the loader
        can drop single rows (duplicates of an earlier file) without decoding.

        An encoder whose `refuses_non_text` is true raises TypeError for a value that is
        not a str in a text column; the caller then need not check text columns first."""
        ...


@dataclass(slots=True)
class EncodedChunk:
    """One table's rows from one file, encoded. `types` are the types the values were
    coerced to (data columns); `evidence` is what the file showed of columns the reader
    did not know; `rescued_at` the row index of each rescued value; `raw` the rows as
    read, kept only while there is evidence (the loader may type those columns
    otherwise); `raw_packed` the same rows pickled, in a chunk sent to the loader or
    kept in a staging area, where they are unpickled only if the loader needs them."""

    url: str
    columns: tuple[str, ...]
    payload: bytes
    row_ends: list[int]
    ids: list[str]
    types: dict[str, ColumnType]
    evidence: dict[str, ColumnEvidence]
    rescued_at: list[int]
    raw: TableChunk | None = None
    # Rescued values cut to the warehouse's width for `_rescued_data` (row_layout).
    rescued_cut: int = 0
    # An Arrow IPC payload (encode/arrow_batches.py): cut by table slices, not bytes.
    arrow: bool = False
    raw_packed: bytes | None = None
    # Ids dropped from the chunk since `raw` was packed, dropped from it when unpacked.
    raw_dropped: frozenset[str] | None = None

    @property
    def rows(self) -> int:
        return len(self.ids)

    def rows_as_read(self) -> TableChunk | None:
        if self.raw is None and self.raw_packed is not None:
            unpacked: TableChunk = pickle.loads(self.raw_packed)
            dropped = self.raw_dropped
            return unpacked.without_ids(set(dropped)) if dropped else unpacked
        return self.raw

    def packed(self) -> EncodedChunk:
        """The chunk with its rows as read pickled: most chunks fit the types the
        tables have when the loader commits them, and then their rows as read (Python
        tuples, as many bytes again as the payload, and 95% of the time to unpickle a
        staged file) are never unpickled."""
        if self.raw is None:
            return self
        raw = pickle.dumps(self.raw, protocol=pickle.HIGHEST_PROTOCOL)
        return EncodedChunk(
            self.url,
            self.columns,
            self.payload,
            self.row_ends,
            self.ids,
            self.types,
            self.evidence,
            self.rescued_at,
            None,
            self.rescued_cut,
            self.arrow,
            raw,
        )

    def without_ids(self, drop: set[str]) -> EncodedChunk:
        """The chunk minus the rows whose id is in `drop`.

        Cut by runs of kept rows, with C loops (map, compress, join): a few duplicates
        among thousands of rows cost a few slices, not a Python step per row."""
        ids = self.ids
        if drop.isdisjoint(ids):
            return self
        dropped = list(compress(count(), map(drop.__contains__, ids)))
        # (first, end) of each run of kept rows
        runs = [
            (first, end)
            for first, end in zip([0, *(d + 1 for d in dropped)], [*dropped, len(ids)], strict=True)
            if end > first
        ]
        kept_ids = [i for first, end in runs for i in ids[first:end]]
        if self.arrow:
            from loader.encode.arrow_batches import without_rows

            payload, ends = without_rows(self.payload, runs), list(range(1, len(kept_ids) + 1))
        else:
            payload, ends = self._bytes_of(runs)
        gone = set(dropped)
        packed_dropped = None
        if self.raw_packed is not None:
            packed_dropped = frozenset(drop.intersection(ids)) | (self.raw_dropped or frozenset())
        return EncodedChunk(
            self.url,
            self.columns,
            payload,
            ends,
            kept_ids,
            self.types,
            self.evidence,
            [i - bisect_left(dropped, i) for i in self.rescued_at if i not in gone],
            self.raw.without_ids(drop) if self.raw is not None else None,
            self.rescued_cut,
            self.arrow,
            self.raw_packed,
            packed_dropped,
        )

    def _bytes_of(self, runs: list[tuple[int, int]]) -> tuple[bytes, list[int]]:
        """The payload's bytes of these runs of rows, and their row ends once joined."""
        payload, ends = self.payload, self.row_ends
        pieces: list[bytes] = []
        kept_ends: list[int] = []
        kept = 0  # bytes kept so far
        for first, end in runs:
            start = ends[first - 1] if first else 0
            pieces.append(payload[start : ends[end - 1]])
            kept_ends.extend(map(sub, ends[first:end], repeat(start - kept)))
            kept += ends[end - 1] - start
        return b"".join(pieces), kept_ends


def encode_table(
    url: str,
    chunk: TableChunk,
    known: Mapping[str, ColumnType] | None,
    fixed: Mapping[str, ColumnType],
    uuid_ts: str,
    encoder: RowEncoder,
    width: int | None,
    row_bytes: int | None = None,
    rescued_bytes: int | None = None,
) -> EncodedChunk:
    """One table's rows of one file, typed, rescued and encoded (the limits are the
    warehouse's: see row_layout.lay_out_columns)."""
    columns = chunk.columns()
    types: dict[str, ColumnType] = {}
    evidence: dict[str, ColumnEvidence] = {}
    for name, values in columns.items():
        kind = (known or {}).get(name) or fixed.get(name)
        if kind is None:
            found = column_evidence(values)
            if found is None:
                continue  # all null and unknown: the column waits, its NULLs need no COPY
            evidence[name] = found
            kind = found.column_type
        types[name] = kind
    all_types = {**fixed, **types}
    names = [n for n in columns if n in types and n not in (RESCUED_COLUMN, "uuid_ts")]

    def laid_out_and_encoded(
        trust_text: bool,
    ) -> tuple[list[str], bytes, list[int], list[int], int]:
        rescued = [dict(r) if r else None for r in chunk.rescued]  # the raw chunk keeps its own
        out_names, values, rescued_at, cut = lay_out_columns(
            names,
            all_types,
            columns,
            fixed,
            rescued,
            uuid_ts,
            width,
            trust_text,
            row_bytes,
            rescued_bytes,
        )
        types_out = [(n, all_types[n]) for n in out_names]
        payload, row_ends = encoder.encode(types_out, values, len(rescued))
        return out_names, payload, row_ends, rescued_at, cut

    # Text columns nearly always hold text: an encoder that refuses anything else in them
    # is trusted to say so, and only a chunk it refused is checked value by value (one
    # pass less over every text value: 8% of a reader's work).
    trust_text = width is None and getattr(encoder, "refuses_non_text", False)
    try:
        out_names, payload, row_ends, rescued_at, cut = laid_out_and_encoded(trust_text)
    except TypeError:
        if not trust_text:
            raise
        out_names, payload, row_ends, rescued_at, cut = laid_out_and_encoded(False)
    data_types = {n: t for n, t in types.items() if n not in fixed}
    return EncodedChunk(
        url,
        tuple(out_names),
        payload,
        row_ends,
        list(columns["id"]),
        data_types,
        evidence,
        rescued_at,
        chunk if evidence else None,
        cut,
        arrow=not getattr(encoder, "sliceable", True),
    )
