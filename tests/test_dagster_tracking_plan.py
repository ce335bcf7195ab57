"""Dagster with a tracking plan: a `tracking_plan_conformance` check per event table
(a warning above the source's threshold) and violation counts in each table's
materialisation metadata, on DuckDB and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from tests.test_dagster import DAYS, _defs, _key, _materialize, project_dir  # noqa: F401

PLAN = """\
version: 1
violations: report
events:
  Order Completed:
    allow_unplanned: true
  "Product *":
    properties:
      product_id: string
"""


def test_conformance_check_and_violation_metadata(project_dir: Path) -> None:  # noqa: F811
    # A first day with no plan: the event tables are discovered and become assets.
    assert _materialize(_defs(project_dir), DAYS[0]).success
    (project_dir / "tracking_plan.yml").write_text(PLAN)
    sluice_yml = project_dir / "sluice.yml"
    text = sluice_yml.read_text().replace(
        "    kind: events ",
        "    tracking_plan: tracking_plan.yml\n    conformance_threshold: 0.5\n    kind: events ",
        1,
    )
    assert text != sluice_yml.read_text()
    sluice_yml.write_text(text)
    defs = _defs(project_dir)
    assets_def = next(a for a in defs.assets if isinstance(a, dg.AssetsDefinition))
    specs = {(c.asset_key, c.name) for c in assets_def.check_specs}
    assert (_key("order_completed"), "tracking_plan_conformance") in specs
    assert (_key("pages"), "tracking_plan_conformance") not in specs

    result = _materialize(defs, DAYS[1])
    assert result.success
    checks = {(c.asset_key, c.check_name): c for c in result.get_asset_check_evaluations()}
    # Order Completed matches its plan (extra properties allowed): conformant.
    order = checks[(_key("order_completed"), "tracking_plan_conformance")]
    assert order.passed and order.metadata["violating_events"].value == 0
    assert order.metadata["events_checked"].value > 0
    # Product events send properties the plan does not list: every one violates.
    viewed = checks[(_key("product_viewed"), "tracking_plan_conformance")]
    assert not viewed.passed and viewed.severity == dg.AssetCheckSeverity.WARN
    assert viewed.metadata["violating_rate"].value > 0.5
    assert viewed.metadata["threshold"].value == 0.5
    events = {e.asset_key: e for e in result.get_asset_materialization_events()}
    meta = events[_key("product_viewed")].materialization.metadata
    assert meta["tracking_plan_violations"].value >= viewed.metadata["violating_events"].value
    assert (
        events[_key("order_completed")].materialization.metadata["tracking_plan_violations"].value
        == 0
    )
