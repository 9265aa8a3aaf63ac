"""Keep Lance datasets compact by binary copy, from Python, the terminal or Dagster.

>>> from lance_assets import CompactionOptions, compact
>>> report = compact("data/events.lance", CompactionOptions(target_rows_per_fragment=1_000_000))  # doctest: +SKIP

The engine's entry points are re-exported here; the Dagster layer is ``lance_assets.dagster``.
"""

__version__ = "0.1.0"

from lance_assets.engine import (
    CleanupReport,
    CompactionOptions,
    CompactionPlan,
    CompactionReport,
    CompactionTask,
    DaskRunner,
    Dataset,
    DatasetRef,
    IndexUpkeepReport,
    Inspection,
    LocalRunner,
    ProcessRunner,
    RayRunner,
    RewriteResult,
    TaskRunner,
    cleanup,
    commit_compaction,
    compact,
    execute_task,
    index_coverage,
    inspect_dataset,
    maintain_indices,
    plan_compaction,
    run_plan,
    trim_reuse_index,
)
from lance_assets.errors import LanceAssetsError

__all__ = [
    "CleanupReport",
    "CompactionOptions",
    "CompactionPlan",
    "CompactionReport",
    "CompactionTask",
    "DaskRunner",
    "Dataset",
    "DatasetRef",
    "IndexUpkeepReport",
    "Inspection",
    "LanceAssetsError",
    "LocalRunner",
    "ProcessRunner",
    "RayRunner",
    "RewriteResult",
    "TaskRunner",
    "__version__",
    "cleanup",
    "commit_compaction",
    "compact",
    "execute_task",
    "index_coverage",
    "inspect_dataset",
    "maintain_indices",
    "plan_compaction",
    "run_plan",
    "trim_reuse_index",
]
