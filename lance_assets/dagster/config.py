"""Run config of one compaction, and durations as the Dagster layer takes them.

``CompactionConfig`` declares its fields plainly; each engine option's field takes its default
and description from the option's one declaration (``engine.options``) through
:func:`option_field`, and a test holds the config's fields equal to the options, so a new
option cannot be left out or drift.

Durations are ``timedelta`` in Python; YAML and run config spell them ``30m``, ``2h``, ``7d``
and :func:`duration` reads that spelling (with ``engine.options.parse_duration``).
"""

from __future__ import annotations

import warnings
from datetime import timedelta
from typing import Any

import dagster as dg
from pydantic import Field

from lance_assets.engine.options import CompactionOptions, IndexRemap, PagesMode, option_specs, parse_duration

_SPECS = {spec.name: spec for spec in option_specs()}


def option_help(name: str) -> str:
    """The description of the engine option ``name``, as declared with it."""
    return _SPECS[name].help


def option_field(name: str) -> Any:
    """A config field for the engine option ``name``: its default and description."""
    spec = _SPECS[name]
    if isinstance(spec.default, frozenset):  # config holds lists
        return Field(default_factory=list, description=spec.help)
    return Field(default=spec.default, description=spec.help)


def duration(text: str | int | float) -> timedelta:
    """A duration as YAML and run config spell it (``30m``, ``2h``, ``7d``; a bare number is seconds)."""
    return timedelta(seconds=parse_duration(str(text)))


def python_duration(value: timedelta | str, name: str, *, stacklevel: int = 3) -> timedelta:
    """A duration a Python caller passed: a ``timedelta``. A string such as ``7d`` is still read,
    for one release, with a DeprecationWarning."""
    if isinstance(value, str):
        warnings.warn(
            f"{name} as a string ({value!r}) is deprecated: pass a datetime.timedelta", DeprecationWarning, stacklevel=stacklevel
        )
        return duration(value)
    if value < timedelta(0):
        raise ValueError(f"{name} cannot be negative: {value}")
    return value


class CompactionConfig(dg.Config):
    """Run config of one compaction: every engine option (``CompactionOptions``: same names,
    defaults and descriptions) plus retention and index upkeep. ``options()`` gives the engine
    options."""

    target_rows_per_fragment: int = option_field("target_rows_per_fragment")
    max_rows_per_file: int | None = option_field("max_rows_per_file")
    max_bytes_per_file: int | None = option_field("max_bytes_per_file")
    read_batch_bytes: int = option_field("read_batch_bytes")
    max_concurrent_requests: int = option_field("max_concurrent_requests")
    task_processes: int = option_field("task_processes")
    max_source_fragments: int | None = option_field("max_source_fragments")
    excluded_fragment_ids: list[int] = option_field("excluded_fragment_ids")
    materialize_deletions: bool = option_field("materialize_deletions")
    materialize_deletions_threshold: float = option_field("materialize_deletions_threshold")
    commit_every: int | None = option_field("commit_every")
    reencode_fallback: bool = option_field("reencode_fallback")
    verify_output: bool = option_field("verify_output")
    index_remap: IndexRemap = option_field("index_remap")
    pages: PagesMode = option_field("pages")
    dry_run: bool = option_field("dry_run")

    cleanup_older_than: str | None = Field(
        default=None,
        description="After a compaction that committed, remove versions older than this (e.g. 7d) and the files "
        "only they reference; unset: the definitions' default (no retention unless "
        "build_lance_compaction_defs(cleanup_older_than=...)).",
    )
    retain_versions: int | None = Field(
        default=None, description="Versions always kept by that retention (default: the definitions' value, 1)."
    )
    optimize_indices: bool = Field(
        default=True,
        description="After a compaction that committed, index unindexed rows with pylance's optimize_indices (when installed) "
        "and trim the fragment-reuse versions every index has caught up with.",
    )

    def options(self) -> CompactionOptions:
        """The engine options this run config holds (storage options come from the resource)."""
        values = {name: getattr(self, name) for name, spec in _SPECS.items() if spec.dagster}
        values["excluded_fragment_ids"] = frozenset(values["excluded_fragment_ids"])
        return CompactionOptions(**values)
