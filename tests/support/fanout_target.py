"""Module-level job factories for executors that rebuild the job in other processes.

Multiprocess and dask executors re-import this module (``tests.support.fanout_target``)
in each step's process (the tests pass the repository root as the reconstructable job's
working directory) and call the function again; the dataset root comes from ``LANCE_ASSETS_TEST_ROOT``.
"""

from __future__ import annotations

import os

import dagster as dg

from lance_assets.dagster import build_lance_compaction_defs

ROOT_ENV = "LANCE_ASSETS_TEST_ROOT"
NAME = "fan"
PARTITIONS = ["a", "b"]
JOB = f"{NAME}_fanout_compaction"


def _defs(executor: dg.ExecutorDefinition | None = None, pool: str | None = "lance_compaction") -> dg.Definitions:
    base = build_lance_compaction_defs(
        NAME, root=os.environ[ROOT_ENV], partitioning=dg.StaticPartitionsDefinition(PARTITIONS), pool=pool
    )
    return dg.Definitions.merge(base, dg.Definitions(executor=executor)) if executor is not None else base


def multiprocess_fanout_job() -> dg.JobDefinition:
    """The factory's fan-out job with the default executor (multiprocess under ``execute_job``)."""
    return _defs().resolve_job_def(JOB)


def dask_fanout_job() -> dg.JobDefinition:
    """The same job on dagster-dask's executor."""
    from dagster_dask import dask_executor

    return _defs(dask_executor, pool=None).resolve_job_def(JOB)


def dask_compaction_job() -> dg.JobDefinition:
    """The compaction asset job (asset step + check step) on dagster-dask's executor."""
    from dagster_dask import dask_executor

    return _defs(dask_executor, pool=None).resolve_job_def(f"{NAME}_compaction")
