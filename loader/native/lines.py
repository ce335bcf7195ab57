"""A file's text as an Arrow array of its lines, split in C (numpy), for the warehouse
to read: item n is line n + 1, as the reference reader numbers lines; each keeps its
newline and whitespace (the SQL strips, as the reference strips). Not a byte is copied:
the lines are offsets into the file's text."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_WHITESPACE = np.frombuffer(b" \t\n\r\x0b\x0c", dtype=np.uint8)  # bytes.strip()'s


def lines_of(text: bytes) -> tuple[pa.Array, int]:
    """(the lines, how many are not blank: what the reference counts as a file's lines)."""
    if not text:
        return pa.array([], pa.large_binary()), 0
    data = np.frombuffer(text, dtype=np.uint8)
    ends = np.flatnonzero(data == 10) + 1
    last = [len(data)] if len(ends) == 0 or ends[-1] != len(data) else []
    offsets = np.concatenate(([0], ends, last)).astype(np.int64)
    count = len(offsets) - 1
    # Blank: every byte whitespace. Only a line that starts with one can be (few).
    starts = offsets[:-1]
    maybe = np.flatnonzero(np.isin(data[starts], _WHITESPACE))
    blank = sum(1 for i in maybe if not text[offsets[i] : offsets[i + 1]].strip())
    lines = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(text)]
    )
    return lines, count - blank


def as_text(lines: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(each line as text, NULL where it is not UTF-8; the raw bytes of those lines
    alone, NULL elsewhere): the warehouse reads text without checking it again, and a
    line that is not text stays as it was for the reference path."""
    try:
        return lines.cast(pa.large_string()), pa.nulls(len(lines), pa.large_binary())
    except pa.ArrowInvalid:
        texts: list[str | None] = []
        raws: list[bytes | None] = []
        for line in lines.to_pylist():
            try:
                texts.append(line.decode("utf-8"))
                raws.append(None)
            except UnicodeDecodeError:
                texts.append(None)
                raws.append(line)
        return pa.array(texts, pa.large_string()), pa.array(raws, pa.large_binary())
