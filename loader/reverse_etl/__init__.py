"""Reverse ETL: SQL models in the warehouse, synced out to destinations by diff.

A model (``sql/models/<name>.sql`` + ``.yml``) is materialised in the warehouse, hashed
per row and joined against the last snapshot the destination accepted (all in SQL);
only the change set is paged out, sent in batches, and the snapshot advanced for the
records the destination accepted.
"""
