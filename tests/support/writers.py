"""Other writers for the reliability tests: pylance (and our own compaction) in separate processes.

Everything here is importable by a ``multiprocessing`` spawn child (the repository root is
on ``sys.path``, so this module imports as ``tests.support.writers``); results travel back as plain data.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import time
import traceback
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

SPAWN = mp.get_context("spawn")


def table(start: int, rows: int) -> pa.Table:
    return pa.table({"id": pa.array(range(start, start + rows), pa.int64()), "v": pa.array([0] * rows, pa.int64())})


def build(uri: str | Path, sizes: list[int], version: str = "2.1", start: int = 0, **kwargs: Any) -> int:
    """One pylance append per size, ids contiguous from ``start``; returns the next free id."""
    import lance

    for i, n in enumerate(sizes):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lance.write_dataset(
                table(start, n), str(uri), mode="append" if i or start else "create", data_storage_version=version, **kwargs
            )
        start += n
    return start


def _run(fn: Callable[..., Any], args: tuple, queue: Any) -> None:
    try:
        queue.put(("ok", fn(*args)))
    except BaseException as exc:
        queue.put(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))


def in_process(fn: Callable[..., Any], *args: Any, timeout: float = 120) -> Any:
    """Run ``fn(*args)`` in a fresh spawned process; its return value, or RuntimeError with its error."""
    queue = SPAWN.Queue()
    proc = SPAWN.Process(target=_run, args=(fn, args, queue))
    proc.start()
    try:
        outcome = queue.get(timeout=timeout)
    finally:
        proc.join(timeout=30)
    if outcome[0] == "error":
        raise RuntimeError(outcome[1] + "\n" + outcome[2])
    return outcome[1]


# --- single operations a concurrent pylance writer performs ------------------------------
def pylance_op(uri: str, op: str) -> str:
    """One pylance commit of kind ``op`` on the dataset built by ``test_concurrency``."""
    import lance

    warnings.simplefilter("ignore")
    ds = lance.dataset(uri)
    if op == "append":
        lance.write_dataset(table(10_000, 5), uri, mode="append")
    elif op == "delete_other":
        ds.delete("id = 1005")  # the large fragment, not compacted
    elif op == "delete_ours":
        ds.delete("id = 3")
    elif op == "update_ours":
        ds.update({"v": "v + 7"}, where="id = 4")
    elif op == "update_other":
        ds.update({"v": "v + 7"}, where="id = 1006")
    elif op == "index":
        ds.create_scalar_index("id", "BTREE")
    elif op == "add_columns":
        ds.add_columns({"w": "id * 2"})
    elif op == "drop_columns":
        ds.drop_columns(["v"])
    elif op == "update_config":
        ds.update_config({"owner": "tests"})
    elif op == "overwrite":
        lance.write_dataset(table(50_000, 3), uri, mode="overwrite")
    elif op == "restore":
        ds.checkout_version(1).restore()
    elif op == "pylance_compact":
        ds.optimize.compact_files(target_rows_per_fragment=1000)
    elif op == "our_compact":
        from lance_assets.engine.compaction import compact
        from lance_assets.engine.options import CompactionOptions

        compact(uri, CompactionOptions(target_rows_per_fragment=100))
    else:
        raise ValueError(op)
    return op


# --- long-running writers ------------------------------------------------------------------
def appender(uri: str, worker: int, count: int, rows: int) -> dict[str, int]:
    """``count`` pylance appends of ``rows`` rows with ids ``1_000_000 * (worker+1) + …``."""
    import lance

    warnings.simplefilter("ignore")
    failures = 0
    for i in range(count):
        start = 1_000_000 * (worker + 1) + i * rows
        while True:
            try:
                lance.write_dataset(table(start, rows), uri, mode="append")
                break
            except Exception:
                failures += 1
                if failures > 50:
                    raise
                time.sleep(0.05)
    return {"appended": count * rows, "failures": failures}


def mutator(uri: str, kind: str, seed: int, count: int, id_range: int) -> dict[str, Any]:
    """Random single-row deletes or updates (v += 1); returns the ids it changed."""
    import lance

    warnings.simplefilter("ignore")
    rnd = random.Random(seed)
    done: list[int] = []
    failures = 0
    for _ in range(count):
        x = rnd.randrange(id_range)
        try:
            ds = lance.dataset(uri)
            if kind == "delete":
                ds.delete(f"id = {x}")
            else:
                ds.update({"v": "v + 1"}, where=f"id = {x}")
            done.append(x)
        except Exception:
            failures += 1
    return {"kind": kind, "ids": done, "failures": failures}


def compact_at_barrier(uri: str, barrier: Any, target: int) -> dict[str, Any]:
    """Plan and copy, wait for the rival at the barrier, then commit: the tightest race two compactions can run."""
    from lance_assets.engine.committing.commit import commit_compaction
    from lance_assets.engine.copying.copy import execute_task
    from lance_assets.engine.dataset import Dataset
    from lance_assets.engine.options import CompactionOptions
    from lance_assets.engine.planning.plan import plan_compaction
    from lance_assets.errors import CommitConflictError
    from lance_assets.io import Storage

    storage = Storage(uri)
    plan = plan_compaction(Dataset.open(storage), CompactionOptions(target_rows_per_fragment=target))
    results = [execute_task(storage, plan, t) for t in plan.tasks]
    written = [p for r in results for p in r.files_written]
    barrier.wait(timeout=60)
    try:
        report = commit_compaction(storage, plan, results)
    except CommitConflictError as exc:
        return {"committed": False, "error": str(exc), "written": written, "read_version": plan.read_version}
    return {
        "committed": True,
        "version": report.version,
        "written": written,
        "read_version": plan.read_version,
        "retries": report.retries,
    }


# --- judging a dataset's whole history -------------------------------------------------------
def history(uri: str) -> dict[int, dict[str, Any]]:
    """Per version: pylance's row count, and from our reader the fragment ids and their files."""
    import lance

    from lance_assets.engine.dataset import Dataset, list_versions
    from lance_assets.io import Storage

    storage = Storage(uri)
    out = {}
    for loc in list_versions(storage):
        ours = Dataset.open(storage, loc.version)
        out[loc.version] = {
            "rows": lance.dataset(uri, version=loc.version).count_rows(),
            "fragments": {f.id: tuple(df.path for df in f.files) for f in ours.manifest.fragments},
            "max_fragment_id": ours.manifest.max_fragment_id,
            "op": (ours.file.transaction.WhichOneof("operation") if ours.file.transaction else None),
        }
    return out


def check_fragment_ids(hist: dict[int, dict[str, Any]]) -> None:
    """A fragment id, once used, always names the same files, and max_fragment_id never shrinks."""
    seen: dict[int, tuple[str, ...]] = {}
    last_max = -1
    for version in sorted(hist):
        h = hist[version]
        if h["op"] in ("overwrite", "restore"):
            seen, last_max = {}, -1  # a new lineage may legitimately start over
        for fid, files in h["fragments"].items():
            assert seen.setdefault(fid, files) == files, f"fragment id {fid} reused with other files at version {version}"
            assert fid <= h["max_fragment_id"], f"fragment {fid} above max_fragment_id at version {version}"
        assert h["max_fragment_id"] >= last_max or not h["fragments"], f"max_fragment_id went down at version {version}"
        last_max = max(last_max, h["max_fragment_id"])


def referenced_files(uri: str) -> set[str]:
    """Every data file any version references (relative to the dataset root)."""
    from lance_assets.engine.dataset import Dataset, list_versions
    from lance_assets.io import Storage

    storage = Storage(uri)
    out = set()
    for loc in list_versions(storage):
        for f in Dataset.open(storage, loc.version).manifest.fragments:
            out |= {f"data/{df.path}" for df in f.files}
    return out


# --- dying at a chosen instant ------------------------------------------------------------------
KILL_POINTS = [
    "copying",
    "data_files_written",
    "transaction_written",
    "manifest_staged",
    "manifest_committed",
    "hint_half_written",
]


def compact_and_die(uri: str, point: str, target: int, read_batch_bytes: int = 1 << 20, throttle: float = 0.0) -> None:
    """Compact ``uri`` and SIGKILL this very process at ``point`` (run it as a subprocess).

    The kill is real (no handler, no finally block runs), the instant is
    chosen by wrapping the storage primitive that marks it. With point
    ``none`` nothing is killed here (the parent kills at a random time);
    ``throttle`` then sleeps before every storage call, so that a local
    compaction lasts long enough, in every phase, to be hit at random.
    """
    import os
    import signal

    from lance_assets.engine.compaction import compact
    from lance_assets.engine.options import CompactionOptions
    from lance_assets.io import storage as storage_mod

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    Storage = storage_mod.Storage
    calls = {"copy": 0}
    real_copy, real_write = Storage.copy_range, Storage.write
    real_link = os.link

    if point == "copying":

        def copy_range(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            calls["copy"] += 1
            if calls["copy"] == 2:
                die()
            return real_copy(self, *args, **kwargs)

        Storage.copy_range = copy_range
    elif point == "data_files_written":
        import lance_assets.engine.compaction as compaction_mod

        compaction_mod.commit_compaction = lambda *a, **k: die()
    elif point == "transaction_written":

        def write(self, rel, data):  # type: ignore[no-untyped-def]
            real_write(self, rel, data)
            if rel.startswith("_transactions/"):
                die()

        Storage.write = write
    elif point == "manifest_staged":
        os.link = lambda src, dst: die()  # the staging file is complete, the link not made
    elif point == "manifest_committed":

        def link(src, dst):  # type: ignore[no-untyped-def]
            real_link(src, dst)
            die()  # committed, staging file and hint not yet touched

        os.link = link
    elif point == "hint_half_written":

        def write(self, rel, data):  # type: ignore[no-untyped-def]
            if rel.endswith("latest_version_hint.json"):
                with open(self.path(rel), "wb") as f:
                    f.write(data[: len(data) // 2])
                die()
            real_write(self, rel, data)

        Storage.write = write
    elif point != "none":
        raise ValueError(point)
    if throttle:
        import functools
        import time as _time

        def slowed(fn):  # type: ignore[no-untyped-def]
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
                _time.sleep(throttle)
                return fn(*args, **kwargs)

            return wrapper

        for name in ("read", "write", "create", "exists", "list", "copy_range", "delete", "size"):
            setattr(Storage, name, slowed(getattr(Storage, name)))
    print("ready", flush=True)
    compact(uri, CompactionOptions(target_rows_per_fragment=target, read_batch_bytes=read_batch_bytes))
    print("done", flush=True)


def cleanup_and_die(uri: str, deletions: int) -> None:
    """Run version retention on ``uri`` (everything old, newest version kept) and SIGKILL this
    process right after its ``deletions``-th delete (run it as a subprocess)."""
    import os
    import signal

    from lance_assets.engine.maintenance.cleanup import cleanup
    from lance_assets.io import storage as storage_mod

    Storage = storage_mod.Storage
    real_delete = Storage.delete
    done = {"n": 0}

    def delete(self, rel, **kwargs):  # type: ignore[no-untyped-def]
        real_delete(self, rel, **kwargs)
        done["n"] += 1
        if done["n"] == deletions:
            os.kill(os.getpid(), signal.SIGKILL)

    Storage.delete = delete
    cleanup(uri, older_than=timedelta(seconds=0), retain_versions=1)
