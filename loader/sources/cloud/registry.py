"""sluice.yml source settings -> the connector that serves them."""

from __future__ import annotations

from typing import Any

from loader.sources.cloud.engine import DEFAULT_RETRY, Connector, Deadlines


def deadlines_of(settings: Any) -> Deadlines:
    """`request_timeout_seconds` and `sync_budget_seconds` of an API source."""
    return Deadlines(
        request_s=float(settings.request_timeout_seconds),
        sync_s=float(settings.sync_budget_seconds),
    )


def connector_for(settings: Any, root: Any = None) -> Connector:
    """`settings` is one object source of sluice.yml; `root` resolves relative paths."""
    kind = settings.kind
    if kind == "stripe":
        from loader.sources.cloud.stripe import StripeConnector

        return StripeConnector(
            settings.api_key.get_secret_value(),
            settings.base_url,
            DEFAULT_RETRY,
            deadlines_of(settings),
        )
    if kind == "zendesk":
        from loader.sources.cloud.zendesk import ZendeskConnector

        return ZendeskConnector(
            settings.url,
            settings.email,
            settings.api_token.get_secret_value(),
            DEFAULT_RETRY,
            deadlines_of(settings),
        )
    if kind == "salesforce":
        from loader.sources.cloud.salesforce import SalesforceConnector

        return SalesforceConnector(
            settings.instance_url,
            settings.access_token.get_secret_value(),
            settings.fields,
            DEFAULT_RETRY,
            deadlines_of(settings),
        )
    if kind == "objects":
        import os

        from loader.sources.objects_archive import ObjectArchiveConnector

        url = settings.archive
        if root is not None and "://" not in url and not os.path.isabs(url):
            url = str(root / url)
        return ObjectArchiveConnector(url, settings.storage_options or None)
    raise ValueError(f"not an object source: {kind}")


def collections_of(settings: Any, known: dict[str, Any] | None = None) -> list[str]:
    """The collections a source will sync, known without calling the API: configured,
    else the connector's own list (for file exports: what the catalog has seen)."""
    if settings.collections:
        return list(settings.collections)
    if settings.kind == "stripe":
        from loader.sources.cloud.stripe import COLLECTIONS

        return list(COLLECTIONS)
    if settings.kind == "zendesk":
        from loader.sources.cloud.zendesk import ZendeskConnector

        return list(ZendeskConnector.collections)
    if settings.kind == "salesforce":
        from loader.sources.cloud.salesforce import OBJECTS

        return list(OBJECTS)
    return sorted(known or {})
