"""Each option is declared once; the CLI, the Dagster config and the Component are derived."""

from __future__ import annotations

import inspect

from lance_assets.cli import build_parser
from lance_assets.dagster import CompactionConfig, LanceCompactionComponent, build_lance_compaction_defs
from lance_assets.engine.options import CompactionOptions, option_specs


def _compact_actions() -> dict[str, object]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # argparse keeps subparsers here
    compact = sub.choices["compact"]  # type: ignore[attr-defined]
    return {a.dest: a for a in compact._actions}


def test_cli_flags_follow_the_declarations() -> None:
    actions = _compact_actions()
    for spec in option_specs():
        action = actions[spec.name]
        assert spec.flag in action.option_strings  # type: ignore[attr-defined]
        assert action.help.startswith(spec.help)  # type: ignore[attr-defined]
        if spec.name != "excluded_fragment_ids":
            assert action.default == spec.default  # type: ignore[attr-defined]


def test_dagster_config_follows_the_declarations() -> None:
    """CompactionConfig declares each option's field itself (type written there), taking default and
    description from the declaration: every option is there, alike, and nothing else but the
    config's own three fields."""
    fields = CompactionConfig.model_fields
    dagster_specs = [spec for spec in option_specs() if spec.dagster]
    assert set(fields) == {spec.name for spec in dagster_specs} | {"cleanup_older_than", "retain_versions", "optimize_indices"}
    for spec in dagster_specs:
        assert fields[spec.name].description == spec.help
        if spec.name == "excluded_fragment_ids":
            assert (fields[spec.name].annotation, fields[spec.name].get_default(call_default_factory=True)) == (list[int], [])
        else:
            assert fields[spec.name].annotation == spec.type, spec.name
            assert fields[spec.name].default == spec.default
    assert CompactionConfig().options() == CompactionOptions()


def test_component_attributes_are_the_builder_parameters() -> None:
    """Same names, order and defaults; each described in the YAML schema ``dg`` shows; an option
    the Component shares with the engine has the option's default and description."""
    params = inspect.signature(build_lance_compaction_defs).parameters
    fields = LanceCompactionComponent.model_fields
    model = LanceCompactionComponent.get_model_cls()
    assert model is not None
    schema = model.model_json_schema()["properties"]
    assert list(fields) == list(params) == list(schema)
    for name, param in params.items():
        assert schema[name].get("description"), name
        if param.default is not inspect.Parameter.empty:
            assert fields[name].default == param.default, name
    shared = [spec for spec in option_specs() if spec.dagster and spec.name in fields]
    assert [spec.name for spec in shared] == ["target_rows_per_fragment"]
    for spec in shared:
        assert (schema[spec.name]["description"], fields[spec.name].default) == (spec.help, spec.default)
