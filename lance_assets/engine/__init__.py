"""What compaction means: opening datasets, planning, copying, committing, reporting.

Uses ``format`` and ``io``; knows nothing of Dagster or the terminal. Every entry point takes
the dataset first, as a :data:`DatasetRef`: a URI (with ``storage_options`` for credentials),
an open :class:`Dataset`, or a configured :class:`~lance_assets.io.Storage`.
"""

from lance_assets.engine.cleanup import CleanupReport, bytes_on_disk, cleanup
from lance_assets.engine.commit import commit_compaction
from lance_assets.engine.compaction import compact, dry_run_report, run_plan
from lance_assets.engine.copy import execute_task
from lance_assets.engine.dataset import Dataset, DatasetRef
from lance_assets.engine.index_upkeep import IndexUpkeepReport, maintain_indices, trim_reuse_index
from lance_assets.engine.indices import IndexCoverage, index_coverage
from lance_assets.engine.inspect import Inspection, inspect_dataset
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.plan import CompactionPlan, CompactionTask, plan_compaction
from lance_assets.engine.report import CompactionReport, Reason, RewriteResult, SkippedFragment
from lance_assets.engine.runners import DaskRunner, LocalRunner, ProcessRunner, RayRunner, TaskRunner

__all__ = [
    "CleanupReport",
    "CompactionOptions",
    "CompactionPlan",
    "CompactionReport",
    "CompactionTask",
    "DaskRunner",
    "Dataset",
    "DatasetRef",
    "IndexCoverage",
    "IndexUpkeepReport",
    "Inspection",
    "LocalRunner",
    "ProcessRunner",
    "RayRunner",
    "Reason",
    "RewriteResult",
    "SkippedFragment",
    "TaskRunner",
    "bytes_on_disk",
    "cleanup",
    "commit_compaction",
    "compact",
    "dry_run_report",
    "execute_task",
    "index_coverage",
    "inspect_dataset",
    "maintain_indices",
    "plan_compaction",
    "run_plan",
    "trim_reuse_index",
]
