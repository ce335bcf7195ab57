"""HTTP webhook: JSON batches POSTed to a URL.

Body: ``{"model": NAME, "records": [{"id", "op", "key", "fields"}, ...]}`` where `op` is
upsert, insert, update or delete and `id` is stable for the same change (so a receiver
can ignore a re-delivery). The auth header's value comes from an environment variable,
so it is never in the YAML, a plan or a report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal
from urllib.parse import urlsplit

import requests
from pydantic import Field, field_validator

from loader.reverse_etl.destinations import Destination, Record, SendResult
from loader.reverse_etl.destinations._http import HttpConfig, Outcome, deliver, dumps, post_json


class WebhookConfig(HttpConfig):
    type: Literal["webhook"]
    url: str = Field(description="http(s) URL receiving the batches")
    auth_env: str | None = Field(default=None, description="env var holding the auth value")
    auth_header: str = "Authorization"
    headers: dict[str, str] = Field(default_factory=dict, description="extra, not secret")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("url must be an http:// or https:// URL")
        return value


class WebhookDestination(Destination):
    config_class = WebhookConfig
    config: WebhookConfig

    def describe(self) -> str:
        parts = urlsplit(self.config.url)
        port = f":{parts.port}" if parts.port else ""
        # hostname, not netloc: a user:password in the URL must not reach a report
        return f"webhook {parts.scheme}://{parts.hostname}{port}{parts.path}"

    def open(self) -> None:
        self.session = requests.Session()
        self.headers = dict(self.config.headers)
        if self.config.auth_env:
            value = self.secret_from_env(self.config.auth_env, "the webhook's auth header")
            self.headers[self.config.auth_header] = value

    def _post(self, records: Sequence[Record]) -> Outcome:
        body = dumps(
            {
                "model": self.ctx.model,
                "records": [
                    {"id": r.id, "op": r.op, "key": r.key, "fields": r.fields} for r in records
                ],
            }
        )
        return post_json(
            self.session,
            self.config.url,
            body,
            self.config,
            headers=self.headers,
            scrub=self.scrub,
        )

    def send(self, records: Sequence[Record]) -> SendResult:
        return deliver(records, self._post, self.describe())

    def close(self) -> None:
        if hasattr(self, "session"):
            self.session.close()


DESTINATION = WebhookDestination
