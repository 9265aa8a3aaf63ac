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
        if spec.name == "storage_options":
            continue
        action = actions[spec.name]
        assert spec.flag in action.option_strings  # type: ignore[attr-defined]
        assert action.help.startswith(spec.help)  # type: ignore[attr-defined]
        if spec.name != "excluded_fragment_ids":
            assert action.default == spec.default  # type: ignore[attr-defined]


def test_dagster_config_follows_the_declarations() -> None:
    fields = CompactionConfig.model_fields
    for spec in option_specs():
        if not spec.dagster:
            assert spec.name not in fields
            continue
        assert fields[spec.name].description == spec.help
        if spec.name != "excluded_fragment_ids":
            assert fields[spec.name].default == spec.default
    assert CompactionConfig().options() == CompactionOptions()  # type: ignore[operator]


def test_component_attributes_are_the_builder_parameters() -> None:
    params = inspect.signature(build_lance_compaction_defs).parameters
    fields = LanceCompactionComponent.model_fields
    assert list(fields) == list(params)
    for name, param in params.items():
        assert fields[name].description, name
        if param.default is not inspect.Parameter.empty:
            assert fields[name].default == (list(param.default) if isinstance(param.default, tuple) else param.default)
