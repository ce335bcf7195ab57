"""The Dagster code location and profiles.yml: secrets never in what the UI is sent, and a
location that still loads when one target's config is broken."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._serdes import serialize_value

from dagster_project.definitions import build_definitions
from loader.sources.sample import write_archive
from loader.sync.project import load_project

SECRETS = {
    "SLUICE_T_RS_PASSWORD": "rs-password-0001",
    "SLUICE_T_RS_SECRET_KEY": "rs-secret-access-key-0002",
    "SLUICE_T_RS_SESSION": "rs-session-token-0003",
    "SLUICE_T_BQ_JSON": '{"type": "service_account", "private_key": "bq-key-0004"}',
    "SLUICE_T_SF_PASSWORD": "sf-password-0005",
    "SLUICE_T_PG_DSN": "host=127.0.0.1 dbname=x user=u password=pg-dsn-password-0006",
}

PROFILES = """default_target: local
targets:
  local:
    type: duckdb
  rs:
    type: redshift
    host: cluster.example
    user: loader
    dbname: analytics
    password: ${SLUICE_T_RS_PASSWORD}
    s3_staging: s3://bucket/sluice/
    access_key_id: AKIAEXAMPLE
    secret_access_key: ${SLUICE_T_RS_SECRET_KEY}
    session_token: "${SLUICE_T_RS_SESSION}"
  bq:
    type: bigquery
    project: my-project-1
    keyfile_json: ${SLUICE_T_BQ_JSON}
  sf:
    type: snowflake
    account: org-acct
    user: loader
    database: RAW
    password: ${SLUICE_T_SF_PASSWORD}
  pg:
    type: postgres
    dsn: ${SLUICE_T_PG_DSN}
  literal:
    type: postgres
    host: h
    user: u
    dbname: d
    password: written-in-the-file-0007
"""


def _project(root: Path, profiles: str, targets: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_archive(root / "archive", 200, events_per_file=200, files_per_day=1)
    (root / "sluice.yml").write_text(
        "profiles: profiles.yml\nsources:\n  web:\n    archive: archive\n"
        "    start_date: 2026-11-01\n"
        f"    targets: [{', '.join(targets)}]\n"
    )
    (root / "profiles.yml").write_text(profiles)
    return root


def test_resource_config_the_ui_shows_holds_no_secret(tmp_path: Path, monkeypatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    root = _project(tmp_path, PROFILES, ["local", "rs", "bq", "sf", "pg", "literal"])
    defs = build_definitions(load_project(root / "sluice.yml"))
    repo = defs.get_repository_def()
    snap = RepositorySnap.from_def(repo)
    shown = {r.name: r.configured_values for r in snap.resources}
    assert set(shown) >= {f"warehouse_{t}" for t in ("local", "rs", "bq", "sf", "pg", "literal")}
    # Everything the webserver is sent about this location.
    sent = serialize_value(snap)
    for secret in [*SECRETS.values(), "written-in-the-file-0007"]:
        for part in (secret, secret[-10:]):
            assert part not in sent, f"{part!r} reaches the Dagster UI"
    # At run time the resource still resolves the secret from the environment.
    spec = defs.resources["warehouse_rs"].spec()
    assert spec.secret_access_key.get_secret_value() == SECRETS["SLUICE_T_RS_SECRET_KEY"]
    assert spec.session_token.get_secret_value() == SECRETS["SLUICE_T_RS_SESSION"]


BROKEN = """default_target: local
targets:
  local:
    type: duckdb
  reporting:
    type: postgres
    host: 127.0.0.1
    user: postgres
    dbname: postgres
    password: ${SLUICE_T_REPORTING_PW}
"""


def test_a_broken_target_leaves_the_location_loading_and_says_why(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.delenv("SLUICE_T_REPORTING_PW", raising=False)
    root = _project(tmp_path / "proj", BROKEN, ["local", "reporting"])
    defs = build_definitions(load_project(root / "sluice.yml"))
    by_target = {
        next(iter(a.keys)).path[0]: a for a in defs.assets if isinstance(a, dg.AssetsDefinition)
    }
    broken = by_target["reporting"]
    for spec in broken.specs:
        note = str(spec.metadata["sluice/target_config"])
        assert "SLUICE_T_REPORTING_PW" in note and note.startswith("broken:")
        assert spec.description.startswith("Cannot run until the target's config is fixed")
    assert all("sluice/target_config" not in s.metadata for s in by_target["local"].specs)
    # A run of the broken target fails with the config sentence, not a traceback.
    result = dg.materialize(
        [broken],
        instance=dg.DagsterInstance.ephemeral(),
        resources=defs.resources,
        partition_key="2026-11-01",
        raise_on_error=False,
    )
    assert not result.success
    failures = [e for e in result.all_events if e.is_step_failure]
    text = str(failures[0].step_failure_data.error.message)
    assert "line 10: environment variable SLUICE_T_REPORTING_PW is not set" in text
    # The code location loads as `dagster dev` / `definitions validate` load it.
    monkeypatch.setenv("SLUICE_PROJECT", str(root))
    from dagster_project.definitions import defs as location

    dg.Definitions.validate_loadable(location.load_fn())


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("    password: ${SLUICE_T_REPORTING_PW}\n", "    port: five\n"),
            "targets.reporting.port",
        ),
        (("type: postgres", "type: postgress"), "did you mean 'postgres'"),
    ],
)
def test_a_target_with_a_mistake_is_marked_not_fatal(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    root = _project(tmp_path / "proj", BROKEN.replace(*change), ["local", "reporting"])
    defs = build_definitions(load_project(root / "sluice.yml"))
    built = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    specs = [s for a in built for s in a.specs if s.key.path[0] == "reporting"]
    assert specs and all(expected in str(s.metadata["sluice/target_config"]) for s in specs)
