"""Cloud object sources: SaaS APIs whose collections upsert into one schema each."""
