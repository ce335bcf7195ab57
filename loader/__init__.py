"""Sluice: Segment-spec event archives into warehouse tables, and reverse ETL back out."""

from loader.compiled import use_source_when_needed

use_source_when_needed()
