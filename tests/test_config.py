"""${VAR} references in the files users edit."""

from __future__ import annotations

import pytest

from loader.config import ConfigError, interpolate


def test_references_in_comments_are_documentation_not_settings(monkeypatch) -> None:
    monkeypatch.setenv("SLUICE_T_HOST", "db.internal")
    monkeypatch.delenv("SLUICE_T_UNSET", raising=False)
    text = (
        "host: ${SLUICE_T_HOST}  # or ${SLUICE_T_UNSET}\n"
        "#   api_key: ${SLUICE_T_UNSET}\n"
        "note: 'a # ${SLUICE_T_HOST}'\n"
        "port: ${SLUICE_T_UNSET:-5432}\n"
    )
    assert interpolate(text, "f.yml").splitlines() == [
        "host: db.internal  # or ${SLUICE_T_UNSET}",
        "#   api_key: ${SLUICE_T_UNSET}",
        "note: 'a # db.internal'",
        "port: 5432",
    ]
    with pytest.raises(ConfigError, match=r"f.yml, line 1: environment variable SLUICE_T_UNSET"):
        interpolate("key: ${SLUICE_T_UNSET}\n", "f.yml")
