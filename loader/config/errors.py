"""The one error a hand-edited file raises: a sentence naming file, line and fix."""

from __future__ import annotations


class ConfigError(Exception):
    """Bad configuration; the message is one sentence naming file, line and fix."""
