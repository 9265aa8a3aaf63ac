"""What compaction means: opening datasets, planning, copying, committing, reporting.

Uses ``format`` and ``io``; knows nothing of Dagster or the terminal. Every entry point takes
the dataset first, as a :data:`DatasetRef`: a URI (with ``storage_options`` for credentials),
an open :class:`Dataset`, or a configured :class:`~lance_assets.io.Storage`.

The public names below are loaded on first use (PEP 562), not when the package is imported:
the CLI, a sensor tick or a remote task imports only the modules its path runs, so starting
one does not pay for planning, committing, cleanup and their dependencies all at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lance_assets.engine.committing.commit import commit_compaction
    from lance_assets.engine.compaction import compact, dry_run_report, run_plan
    from lance_assets.engine.copying.copy import execute_task
    from lance_assets.engine.dataset import Dataset, DatasetRef
    from lance_assets.engine.indices import IndexCoverage, index_coverage
    from lance_assets.engine.maintenance.cleanup import CleanupReport, bytes_on_disk, cleanup
    from lance_assets.engine.maintenance.index_upkeep import IndexUpkeepReport, maintain_indices, trim_reuse_index
    from lance_assets.engine.maintenance.inspect import Inspection, inspect_dataset
    from lance_assets.engine.options import CompactionOptions
    from lance_assets.engine.planning.plan import CompactionPlan, CompactionTask, plan_compaction
    from lance_assets.engine.report import CompactionReport, Reason, RewriteResult, SkippedFragment
    from lance_assets.engine.runners import DaskRunner, LocalRunner, ProcessRunner, RayRunner, TaskRunner

#: Where each public name lives (module below ``lance_assets.engine``).
_HOMES = {
    "CleanupReport": "maintenance.cleanup",
    "bytes_on_disk": "maintenance.cleanup",
    "cleanup": "maintenance.cleanup",
    "commit_compaction": "committing.commit",
    "compact": "compaction",
    "dry_run_report": "compaction",
    "run_plan": "compaction",
    "execute_task": "copying.copy",
    "Dataset": "dataset",
    "DatasetRef": "dataset",
    "IndexUpkeepReport": "maintenance.index_upkeep",
    "maintain_indices": "maintenance.index_upkeep",
    "trim_reuse_index": "maintenance.index_upkeep",
    "IndexCoverage": "indices",
    "index_coverage": "indices",
    "Inspection": "maintenance.inspect",
    "inspect_dataset": "maintenance.inspect",
    "CompactionOptions": "options",
    "CompactionPlan": "planning.plan",
    "CompactionTask": "planning.plan",
    "plan_compaction": "planning.plan",
    "CompactionReport": "report",
    "Reason": "report",
    "RewriteResult": "report",
    "SkippedFragment": "report",
    "DaskRunner": "runners",
    "LocalRunner": "runners",
    "ProcessRunner": "runners",
    "RayRunner": "runners",
    "TaskRunner": "runners",
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
