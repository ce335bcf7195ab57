"""Rows laid out and encoded for a warehouse's bulk path, and the reader processes that
parse, validate, normalise and encode archive files in parallel."""
