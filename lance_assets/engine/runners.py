"""Where copy tasks run: in this process, in local processes, on a Ray or Dask cluster.

A compaction is plan → tasks → results → one commit, and only the middle step is heavy. A
runner takes a plan and some of its tasks and returns their results in plan order; the caller
commits. Plans and tasks are small picklable dataclasses and every task reads and writes
through the dataset's URI with the plan's storage options, so a worker needs the package and
credentials -- no Dagster instance, no shared disk beyond the dataset itself.

Files a failed or killed attempt wrote are never referenced by a commit; ``lance-assets
cleanup`` removes them once they are older than its grace period.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, Protocol

from lance_assets.engine.committing.commit_loop import remove_files
from lance_assets.engine.copying import parts
from lance_assets.engine.copying.copy import execute_task
from lance_assets.engine.options import RUNNER_CHOICES as RUNNER_CHOICES
from lance_assets.engine.options import RUNNER_LOCAL as RUNNER_LOCAL
from lance_assets.engine.options import RUNNER_PROCESSES as RUNNER_PROCESSES
from lance_assets.engine.options import RUNNER_RAY as RUNNER_RAY
from lance_assets.engine.planning.tasks import CompactionPlan, CompactionTask
from lance_assets.engine.report import ProgressCallback, RewriteResult
from lance_assets.errors import MissingExtraError
from lance_assets.io import Storage

logger = logging.getLogger(__name__)

TaskDone = Callable[[RewriteResult], None]


@dataclass(frozen=True)
class RunOutcome:
    """Results in the order of the tasks given, the distinct worker processes that produced
    them and how many task attempts were lost to dead workers and run again."""

    results: list[RewriteResult]
    worker_ids: tuple[str, ...]  # "host:pid" per result
    task_retries: int = 0

    @property
    def workers(self) -> int:
        return len(set(self.worker_ids))


class TaskRunner(Protocol):
    """Runs ``execute_task`` for each task somewhere; removes what finished tasks wrote if it fails."""

    name: str

    def run(self, plan: CompactionPlan, tasks: Sequence[CompactionTask], on_task_done: TaskDone | None = None) -> RunOutcome: ...


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_one(plan: CompactionPlan, task: CompactionTask) -> tuple[RewriteResult, str]:
    """The entry point on a worker: one task, and who ran it. A worker process (a process
    pool's, Ray's, Dask's) exists to run such tasks, so its allocator keeps freed memory
    (``parts.tune_allocator``)."""
    parts.tune_allocator()
    return execute_task(plan.uri, plan, task), worker_id()


def _clean_up(plan: CompactionPlan, results: Sequence[RewriteResult], storage: Storage | None = None) -> None:
    logger.warning(
        "a copy task failed (or the run was interrupted): removing the %d file(s) %d finished task(s) wrote",
        sum(len(r.files_written) for r in results),
        len(results),
    )
    remove_files(storage or Storage(plan.uri, plan.storage_options), (p for r in results for p in r.files_written))


def _gather(
    plan: CompactionPlan,
    futures: Sequence[Future[tuple[RewriteResult, str]]],
    on_task_done: TaskDone | None,
    storage: Storage | None = None,
) -> RunOutcome:
    """Wait for futures of ``(result, worker)`` in plan order; on the first failure cancel the
    rest, remove what the finished ones wrote and re-raise."""
    try:
        pairs = []
        for future in futures:
            pairs.append(future.result())
            if on_task_done:
                on_task_done(pairs[-1][0])
        return RunOutcome([r for r, _ in pairs], tuple(w for _, w in pairs))
    except BaseException:
        for future in futures:
            future.cancel()
        finished: list[RewriteResult] = []
        for future in futures:  # wait for the running ones: their files must go too
            if future.cancelled():
                continue
            try:
                finished.append(future.result()[0])
            except BaseException:
                pass
        _clean_up(plan, finished, storage)
        raise


def _run_here(
    storage: Storage, plan: CompactionPlan, task: CompactionTask, progress: ProgressCallback | None
) -> tuple[RewriteResult, str]:
    return execute_task(storage, plan, task, progress=progress), worker_id()


@dataclass
class LocalRunner:
    """Tasks in this process, ``max_workers`` at a time in threads (extent copies and reads
    release the GIL). The only runner that reports copied bytes to ``progress`` as they go."""

    max_workers: int = 1
    progress: ProgressCallback | None = None
    storage: Storage | None = None  # an open Storage to reuse (its filesystem, lock and credentials)
    name: str = RUNNER_LOCAL

    def run(self, plan: CompactionPlan, tasks: Sequence[CompactionTask], on_task_done: TaskDone | None = None) -> RunOutcome:
        storage = self.storage or Storage(plan.uri, plan.storage_options)
        if self.max_workers <= 1 or len(tasks) < 2:
            results: list[RewriteResult] = []
            try:
                for task in tasks:
                    results.append(execute_task(storage, plan, task, progress=self.progress))
                    if on_task_done:
                        on_task_done(results[-1])
            except BaseException:
                _clean_up(plan, results, storage)
                raise
            return RunOutcome(results, (worker_id(),) * len(results))
        with ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="lance-assets-copy") as pool:
            return _gather(
                plan, [pool.submit(_run_here, storage, plan, task, self.progress) for task in tasks], on_task_done, storage
            )


@dataclass
class ProcessRunner:
    """Tasks in ``max_workers`` local processes (forkserver): for CPU-bound metadata work
    (many tiny fragments) that threads cannot spread over cores."""

    max_workers: int = 2
    name: str = RUNNER_PROCESSES

    def run(self, plan: CompactionPlan, tasks: Sequence[CompactionTask], on_task_done: TaskDone | None = None) -> RunOutcome:
        with ProcessPoolExecutor(max_workers=self.max_workers, mp_context=get_context("forkserver")) as pool:
            futures = [pool.submit(run_one, plan, task) for task in tasks]
            return _gather(plan, futures, on_task_done)


@dataclass
class RayRunner:
    """Tasks as Ray remote functions on the cluster at ``address`` (None: the one this process
    is connected to, or a local one started for the run and stopped after it).

    A task whose worker dies (killed, out of memory, node lost) is submitted again, up to
    ``max_retries`` times per task; a task that *raises* is not retried -- our errors are
    about the data, and retrying would not change them.
    """

    address: str | None = None
    max_retries: int = 3
    num_cpus: float = 1.0
    name: str = RUNNER_RAY

    def run(self, plan: CompactionPlan, tasks: Sequence[CompactionTask], on_task_done: TaskDone | None = None) -> RunOutcome:
        try:
            import ray
        except ImportError:
            raise MissingExtraError("the ray runner needs Ray: pip install 'lance_assets[ray]'") from None
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            return self._run(ray, plan, tasks, on_task_done)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, ray: Any, plan: CompactionPlan, tasks: Sequence[CompactionTask], on_task_done: TaskDone | None) -> RunOutcome:
        remote = ray.remote(max_retries=0, num_cpus=self.num_cpus)(run_one)
        plan_ref = ray.put(plan)
        pending: dict[Any, tuple[int, int]] = {}  # ref -> (position, attempts so far)
        for position, task in enumerate(tasks):
            pending[remote.remote(plan_ref, task)] = (position, 0)
        done: dict[int, tuple[RewriteResult, str]] = {}
        retries = 0
        crashed = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OwnerDiedError)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                ref = ready[0]
                position, attempts = pending.pop(ref)
                try:
                    done[position] = ray.get(ref)
                except crashed as exc:
                    if attempts >= self.max_retries:
                        raise
                    retries += 1
                    logger.warning(
                        "task %d: its Ray worker died (%s); running it again (retry %d of %d)",
                        tasks[position].task_id,
                        type(exc).__name__,
                        attempts + 1,
                        self.max_retries,
                    )
                    pending[remote.remote(plan_ref, tasks[position])] = (position, attempts + 1)
                    continue
                except ray.exceptions.RayTaskError as exc:
                    raise exc.as_instanceof_cause() from None
                if on_task_done:
                    on_task_done(done[position][0])
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            _clean_up(plan, [r for r, _ in done.values()])
            raise
        pairs = [done[i] for i in range(len(tasks))]
        return RunOutcome([r for r, _ in pairs], tuple(w for _, w in pairs), retries)


@dataclass
class DaskRunner:
    """Tasks on a Dask cluster through ``client`` (a ``distributed.Client``); Dask resubmits a
    task whose worker dies (``allowed-failures``), so retries are not counted here."""

    client: Any
    name: str = "dask"

    def run(self, plan: CompactionPlan, tasks: Sequence[CompactionTask], on_task_done: TaskDone | None = None) -> RunOutcome:
        futures = self.client.map(run_one, [plan] * len(tasks), list(tasks), pure=False)
        return _gather(plan, futures, on_task_done)


def make_runner(
    name: str, *, max_workers: int = 1, ray_address: str | None = None, progress: ProgressCallback | None = None
) -> TaskRunner:
    """The runner a CLI flag or a Dagster setting names."""
    if name == RUNNER_LOCAL:
        return LocalRunner(max_workers, progress)
    if name == RUNNER_PROCESSES:
        return ProcessRunner(max(1, max_workers))
    if name == RUNNER_RAY:
        return RayRunner(ray_address)
    raise ValueError(f"unknown runner {name!r}; expected one of {', '.join(RUNNER_CHOICES)}")
