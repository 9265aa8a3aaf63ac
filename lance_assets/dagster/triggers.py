"""When a dataset is worth maintaining, and Dagster's declarative automation that acts on it.

The fragments record (``<name>/fragments``) carries a dataset's health numbers (see
``fragments.health_values``). ``CompactionTrigger`` holds the thresholds once and says whether
a record crosses them; the small-fragment sensor (``trigger="sensor"``) and the compacted
asset's ``AutomationCondition`` (``trigger="condition"``, the default) both ask it, so the two
ways of triggering cannot disagree on what "needs compaction" means.

The condition is composed from Dagster's own operands (``any_deps_updated``,
``initial_evaluation``, ``since``, ``newly_requested``, ``in_progress``) and two small custom
ones, because no built-in condition reads an upstream's metadata values or knows a run's age:

- ``FragmentsOverThreshold``: the latest fragments record of the partition crosses a threshold;
- ``CompactionCoolingDown``: a compaction of the partition was requested (its run created) or
  started less than ``cooldown`` ago, however it was launched (automation, UI,
  sensor, schedule, fan-out job).

Custom conditions run in the code location's process, so they are evaluated by an
``AutomationConditionSensorDefinition`` with ``use_user_code_server=True`` of our own
(``<name>_automation_sensor``), not by Dagster's default automation sensor (which runs in the
daemon and cannot import them).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import dagster as dg

PARTITION_TAG = "dagster/partition"


@dataclass(frozen=True)
class CompactionTrigger:
    """The thresholds that make a dataset worth a compaction run (with index upkeep).

    A dataset qualifies when *any* threshold that is set is reached: enough mergeable small
    fragments (and, with ``min_small_bytes``, enough bytes in them), enough small pages (only
    known when the record read page health), a large enough share of deleted rows, or enough
    rows no index covers. ``cooldown`` is the least time between two compactions of one
    dataset that automation starts.
    """

    min_small_fragments: int = 16
    min_small_bytes: int | None = None
    min_small_pages: int | None = None
    min_deleted_ratio: float | None = None
    min_unindexed_rows: int | None = None
    cooldown: datetime.timedelta = datetime.timedelta(minutes=10)

    @property
    def needs_pages(self) -> bool:
        """Whether a record must read page health (one metadata read per data file) to be judged."""
        return self.min_small_pages is not None

    def check(self, health: Mapping[str, Any]) -> tuple[bool, str]:
        """(whether ``health`` — a fragments record's values — crosses a threshold, why or why not).

        >>> CompactionTrigger(min_small_fragments=4).check({"small_fragments": 5, "small_fragment_bytes": 10})
        (True, '5 small fragments >= 4')
        >>> CompactionTrigger(min_small_fragments=4).check({"small_fragments": 3, "small_fragment_bytes": 10})
        (False, '3 small fragments < 4')
        """
        met: list[str] = []
        unmet: list[str] = []
        small = int(health.get("small_fragments", 0))
        small_bytes = int(health.get("small_fragment_bytes", 0))
        if small < self.min_small_fragments:
            unmet.append(f"{small} small fragments < {self.min_small_fragments}")
        elif self.min_small_bytes is not None and small_bytes < self.min_small_bytes:
            unmet.append(f"small fragments hold {small_bytes} bytes < {self.min_small_bytes}")
        else:
            met.append(f"{small} small fragments >= {self.min_small_fragments}")
        optional = (
            ("small_pages", self.min_small_pages, "small pages"),
            ("deleted_row_ratio", self.min_deleted_ratio, "deleted-row ratio"),
            ("unindexed_rows", self.min_unindexed_rows, "unindexed rows"),
        )
        for key, threshold, label in optional:
            if threshold is None or key not in health:
                continue
            value = health[key]
            (met if value >= threshold else unmet).append(f"{label} {value} {'>=' if value >= threshold else '<'} {threshold}")
        return (True, "; ".join(met)) if met else (False, "; ".join(unmet))

    def describe(self) -> str:
        parts = [f"small_fragments >= {self.min_small_fragments}"]
        if self.min_small_bytes is not None:
            parts[0] += f" holding >= {self.min_small_bytes} bytes"
        for label, value in (
            ("small_pages", self.min_small_pages),
            ("deleted_row_ratio", self.min_deleted_ratio),
            ("unindexed_rows", self.min_unindexed_rows),
        ):
            if value is not None:
                parts.append(f"{label} >= {value}")
        return " or ".join(parts)


def _partition_keys(subset: Any) -> list[str | None]:
    """The candidate partitions of an entity subset (``[None]`` for an unpartitioned asset that is a candidate)."""
    if subset.is_partitioned:
        return sorted(subset.expensively_compute_partition_keys())
    return [] if subset.is_empty else [None]


def _subset_of(context: dg.AutomationContext[dg.AssetKey], keys: set[str | None]) -> Any:
    candidates = context.candidate_subset
    if candidates.is_partitioned:
        return candidates.compute_intersection_with_partition_keys({k for k in keys if k is not None})
    return candidates if None in keys else context.get_empty_subset()


class _StatelessCondition(dg.AutomationCondition[dg.AssetKey]):
    """Our custom conditions: they read the instance afresh each tick (no cursor of their own)
    and show ``node_name`` in the UI's evaluation tree."""

    node_name: ClassVar[str]

    @property
    def name(self) -> str:
        return self.node_name

    @property
    def requires_cursor(self) -> bool:
        return False


@dataclass(frozen=True, eq=False)  # eq=False keeps AutomationCondition's hash (its tree's unique id)
class FragmentsOverThreshold(_StatelessCondition):
    """True for the partitions whose latest fragments record crosses ``trigger``'s thresholds."""

    node_name: ClassVar[str] = "fragments_over_threshold"
    fragments_key: dg.AssetKey
    trigger: CompactionTrigger

    @property
    def description(self) -> str:
        return f"latest {self.fragments_key.to_user_string()} record: {self.trigger.describe()}"

    def evaluate(self, context: dg.AutomationContext[dg.AssetKey]) -> dg.AutomationResult[dg.AssetKey]:
        instance = context.asset_graph_view.instance
        hits: set[str | None] = set()
        for key in _partition_keys(context.candidate_subset):
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=self.fragments_key, asset_partitions=[key] if key is not None else None),
                limit=1,
            ).records
            if not records or records[0].asset_materialization is None:
                continue
            health = {k: getattr(v, "value", v) for k, v in records[0].asset_materialization.metadata.items()}
            if self.trigger.check(health)[0]:
                hits.add(key)
        return dg.AutomationResult(context=context, true_subset=_subset_of(context, hits))


@dataclass(frozen=True, eq=False)
class CompactionCoolingDown(_StatelessCondition):
    """True for the partitions a compaction run was created or started for within ``cooldown``.

    Runs are found by what they compact: the compacted asset in their asset selection (runs
    launched by automation or the UI's Materialize button) or one of ``job_names`` (our own
    jobs, whose runs may carry no asset selection), and by their ``dagster/partition`` tag.
    """

    node_name: ClassVar[str] = "compaction_cooling_down"
    compacted_key: dg.AssetKey
    job_names: frozenset[str]
    cooldown: datetime.timedelta

    @property
    def description(self) -> str:
        return (
            f"a compaction of this dataset was requested or started less than {self.cooldown.total_seconds() / 60:g} minutes ago"
        )

    def evaluate(self, context: dg.AutomationContext[dg.AssetKey]) -> dg.AutomationResult[dg.AssetKey]:
        if self.cooldown <= datetime.timedelta(0) or context.candidate_subset.is_empty:
            return dg.AutomationResult(context=context, true_subset=context.get_empty_subset())
        cutoff = context.evaluation_time - self.cooldown
        instance = context.asset_graph_view.instance
        recent: set[str | None] = set()
        # a run requested or started after the cutoff was also last updated after it
        for record in instance.get_run_records(filters=dg.RunsFilter(updated_after=cutoff)):
            run = record.dagster_run
            if self.compacted_key not in (run.asset_selection or ()) and run.job_name not in self.job_names:
                continue
            latest = max(record.create_timestamp.timestamp(), record.start_time or 0.0)
            if latest >= cutoff.timestamp():
                recent.add(run.tags.get(PARTITION_TAG))
        partitioned = context.candidate_subset.is_partitioned
        return dg.AutomationResult(
            context=context, true_subset=_subset_of(context, recent if partitioned else ({None} if recent else set()))
        )


def compaction_condition(
    fragments_key: dg.AssetKey, compacted_key: dg.AssetKey, trigger: CompactionTrigger, job_names: frozenset[str]
) -> dg.AutomationCondition[dg.AssetKey]:
    """The compacted asset's default trigger.

    A partition is requested when its fragments were recorded anew (by a writer's version, not
    by the compaction itself: ``any_deps_updated`` ignores updates from runs that also target
    this asset) since its last request — or this is the condition's first evaluation —, no run
    of it is in progress, none was requested or started within the cool-down, and the latest
    record crosses a threshold. So one crossing makes one request, a dataset compaction could
    not improve is not asked again until it changes, and bursts of appends wait out the cool-down.
    """
    recorded_since_request = (
        (dg.AutomationCondition.any_deps_updated() | dg.AutomationCondition.initial_evaluation())
        .since(dg.AutomationCondition.newly_requested())
        .with_label("fragments recorded since the last request")
    )
    condition = (
        recorded_since_request
        & ~dg.AutomationCondition.in_progress()
        & ~CompactionCoolingDown(compacted_key, job_names, trigger.cooldown)
        & FragmentsOverThreshold(fragments_key, trigger)
    )
    return condition.with_label("lance compaction needed")
