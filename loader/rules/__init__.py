"""Segment's rules as pure functions, with no I/O: validating messages, naming,
flattening messages into rows, type inference and evolution, retyping, selective sync
and tracking plans. Each rule lives in exactly one of these modules."""
