"""Rows as Arrow record batches, built by the reader processes themselves, so the
loading process of an Arrow-scanning warehouse (DuckDB) does no per-value work: it
reads the IPC bytes back (zero-copy) and hands the table to the warehouse's own scan.

Values arrive typed and laid out by encode/row_layout.py, as for COPY binary; each
column becomes one typed Arrow array (timestamps as UTC microseconds, `_rescued_data`
as its JSON text)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pyarrow as pa

from loader.encode.encoded import EncoderColumns, EncoderValues
from loader.encode.timestamps import timestamp_column
from loader.rules.schema import ColumnType

ARROW_TYPES: dict[ColumnType, pa.DataType] = {
    ColumnType.BOOLEAN: pa.bool_(),
    ColumnType.BIGINT: pa.int64(),
    ColumnType.DOUBLE: pa.float64(),
    ColumnType.TIMESTAMP: pa.timestamp("us", tz="UTC"),
    ColumnType.TEXT: pa.string(),
}


class ArrowEncoder:
    """One table's rows of one file as an Arrow IPC stream of one record batch.

    Arrow keeps no row boundaries in its bytes, so the row ends it reports are row
    numbers (1, 2, ...): EncodedChunk.without_ids cuts an Arrow chunk as slices of
    its decoded table (`without_rows`), not of its bytes."""

    __slots__ = ()
    # pa.array(..., type=pa.string()) raises ArrowTypeError (a TypeError) for a non-str.
    refuses_non_text = True
    sliceable = False

    def encode(
        self, columns: EncoderColumns, values: EncoderValues, rows: int
    ) -> tuple[bytes, list[int]]:
        arrays = []
        for (_, kind), column in zip(columns, values, strict=True):
            if kind is ColumnType.TIMESTAMP:
                column = timestamp_column(column, rows)
            arrays.append(pa.array(column, type=ARROW_TYPES[kind], size=rows))
        batch = pa.RecordBatch.from_arrays(arrays, names=[name for name, _ in columns])
        return _ipc_bytes(pa.Table.from_batches([batch])), list(range(1, rows + 1))


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def read_table(payloads: Iterable[bytes]) -> pa.Table:
    """The chunks' rows as one Arrow table (the chunks share one column list)."""
    return pa.concat_tables(pa.ipc.open_stream(p).read_all() for p in payloads)


def without_rows(payload: bytes, runs: Sequence[tuple[int, int]]) -> bytes:
    """The payload's rows of these runs (first, end) only, as slices of its table."""
    table = pa.ipc.open_stream(payload).read_all()
    pieces = [table.slice(first, end - first) for first, end in runs]
    return _ipc_bytes(pa.concat_tables(pieces) if pieces else table.slice(0, 0))
