"""The one interface every reverse-ETL destination implements, and the registry.

A destination receives batches of `Record`s (already mapped to its field names) and
says which it accepted; the runner advances the snapshot only for those, so a failed
record is simply part of the next run's change set. Destinations never see the
warehouse's change set or snapshot: that keeps exactly-once bookkeeping in one place.
"""

from __future__ import annotations

import importlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from loader.config.errors import ConfigError
from loader.rules.schema import ColumnType
from loader.scrub import Scrubber
from loader.warehouses.warehouse import Warehouse

# type name -> module defining DESTINATION (imported on use: each pulls its own libraries)
_MODULES = {
    "webhook": "loader.reverse_etl.destinations.webhook",
    "segment": "loader.reverse_etl.destinations.segment",
    "table": "loader.reverse_etl.destinations.table",
    "file": "loader.reverse_etl.destinations.file",
}
KNOWN_TYPES = tuple(_MODULES)


class DestinationError(Exception):
    """The destination cannot take anything (bad URL or credentials): stop the run.

    Raise it only before anything of the batch was accepted (else return a SendResult
    with `stop`). Unsent records stay in the change set and go out on the next run."""


@dataclass(frozen=True)
class Record:
    """One change to deliver. `id` names this change and no other: a re-send of it (after
    a timeout, or a crash between the destination's acceptance and the snapshot commit)
    carries the same id, a later change of the same key never does (loader/reverse_etl/
    ids.py), so a receiver may drop an id it has already applied."""

    seq: int
    kind: str  # added | changed | removed
    op: str  # upsert | insert | update | delete
    key: str
    id: str
    fields: dict[str, Any]  # destination field -> value; only the key field for a delete
    row_hash: str = ""  # the model row's hash (its last for a delete)
    new_id: bool = True  # False: a re-send of the last change sent for this key


@dataclass
class SendResult:
    """Records of the batch that were not accepted, by seq, with a one-line reason; `stop`
    (a sentence) ends the run after this batch: the destination cannot take anything."""

    failed: dict[int, str] = field(default_factory=dict)
    stop: str | None = None


class DestinationConfig(BaseModel):
    """Settings under `destination:` in a model's YAML; subclasses add their fields."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: str
    batch_size: int = 100


@dataclass
class DestinationContext:
    """What a destination may need from the run beyond its own settings."""

    model: str
    run_id: str
    warehouse: Warehouse
    key_field: str
    field_types: dict[str, ColumnType]
    open_target: Callable[[str], Warehouse] | None = None


class Destination(ABC):
    config_class: ClassVar[type[DestinationConfig]]
    supports_delete: ClassVar[bool] = True
    # Whether records reach the receiver with their ids (then each batch's ids are
    # recorded before it is sent, so a re-send keeps them); a table or file has no use
    # for them, and skipping that bookkeeping keeps its large batches cheap.
    delivers_ids: ClassVar[bool] = True

    def __init__(self, config: Any, ctx: DestinationContext) -> None:
        self.config = config
        self.ctx = ctx
        self.scrubber = Scrubber()

    @property
    def batch_size(self) -> int:
        return int(self.config.batch_size)

    @abstractmethod
    def describe(self) -> str:
        """Where records go, for plans and reports; never includes a secret."""

    def open(self) -> None:  # noqa: B027 - optional hook
        """Acquire clients and secrets; raise ConfigError if a setting is unusable."""

    @abstractmethod
    def send(self, records: Sequence[Record]) -> SendResult:
        """Deliver one batch; return the records not accepted. Raise DestinationError
        when nothing can be delivered at all."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release clients."""

    @classmethod
    def check_fields(cls, config: Any, fields: Sequence[str], key_field: str) -> str | None:
        """A problem with the mapped field names for this destination, or None."""
        return None

    # --- secrets ----------------------------------------------------------------------
    def secret_from_env(self, var: str, what: str) -> str:
        value = os.environ.get(var)
        if not value:
            raise ConfigError(
                f"model '{self.ctx.model}': environment variable {var} ({what}) is not set; "
                "export it before `sluice retl run`"
            )
        self.scrubber.add(value)
        return value

    def scrub(self, text: str) -> str:
        """Text with every secret this destination holds, in every form a server may
        echo it (bare token, base64 Basic auth, URL-encoded...), replaced by ***."""
        return self.scrubber(text)


def destination_class(type_name: str) -> type[Destination]:
    if type_name not in _MODULES:
        raise KeyError(type_name)
    module = importlib.import_module(_MODULES[type_name])
    return module.DESTINATION
