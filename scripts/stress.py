"""Reliability stress run: concurrent pylance appenders vs compactions, random SIGKILLs, parser fuzzing.

    .venv/bin/python scripts/stress.py                       # defaults: a few minutes on 2 cores
    .venv/bin/python scripts/stress.py --appenders 4 --rounds 10 --kills 100 --fuzz-cases 50000
    .venv/bin/python scripts/stress.py --json                # one JSON object instead of text

1. Appenders: each round starts N processes that append with pylance (and D
   processes deleting single rows, so compactions also carry deletion files
   and meet real conflicts) while this process compacts in a loop; afterwards
   pylance must return every surviving row exactly once and no deleted row,
   and no fragment id may ever name two different files.
2. Kills: K compactions in subprocesses, each SIGKILLed at a random instant;
   every dataset must then be readable by pylance, equal to the old version or
   to exactly one compaction later, and clean after ``cleanup``.
3. Fuzz: seeded mutations of real pylance-written bytes through every parser
   (tests/support/fuzzing.py) under an address-space limit; only typed errors allowed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPAWN = mp.get_context("spawn")


def _table(start: int, rows: int):  # type: ignore[no-untyped-def]
    import pyarrow as pa

    return pa.table(
        {
            "id": pa.array(range(start, start + rows), pa.int64()),
            "value": pa.array([i * 0.5 for i in range(start, start + rows)], pa.float64()),
            "name": pa.array([f"row-{i}" for i in range(start, start + rows)]),
        }
    )


# --- 1. appenders vs compactions ---------------------------------------------------------------
def _appender(uri: str, worker: int, round_: int, count: int, rows: int, queue: Any) -> None:
    import lance

    warnings.simplefilter("ignore")
    failures = 0
    for i in range(count):
        start = ((round_ * 100 + worker + 1) * 1_000_000) + i * rows
        while True:
            try:
                lance.write_dataset(_table(start, rows), uri, mode="append")
                break
            except Exception:
                failures += 1
                time.sleep(0.02)
    queue.put({"worker": worker, "failures": failures})


def _deleter(uri: str, candidates: list[int], seed: int, stop: Any, queue: Any) -> None:
    """Single-row pylance deletes of random existing ids until ``stop`` is set."""
    import lance

    warnings.simplefilter("ignore")
    rnd = random.Random(seed)
    deleted: list[int] = []
    failures = 0
    while not stop.is_set() and candidates:
        x = candidates.pop(rnd.randrange(len(candidates)))
        try:
            lance.dataset(uri).delete(f"id = {x}")
            deleted.append(x)
        except Exception:
            failures += 1
        time.sleep(0.01)
    queue.put({"deleted": deleted, "failures": failures})


def _fragment_id_violations(uri: str) -> tuple[int, int]:
    """(versions checked, fragment ids that named different files in different versions)."""
    from lance_assets.engine.dataset import Dataset, list_versions
    from lance_assets.io import Storage

    storage = Storage(uri)
    seen: dict[int, tuple[str, ...]] = {}
    bad = 0
    versions = list_versions(storage)
    for loc in versions:
        for f in Dataset.open(storage, loc.version).manifest.fragments:
            files = tuple(df.path for df in f.files)
            bad += seen.setdefault(f.id, files) != files
    return len(versions), bad


def appenders_vs_compactions(
    work: Path, appenders: int, rounds: int, appends: int, rows: int, deleters: int, seed: int
) -> dict[str, Any]:
    import lance

    from lance_assets.engine.compaction import compact
    from lance_assets.engine.options import CompactionOptions
    from lance_assets.errors import CommitConflictError

    warnings.simplefilter("ignore")
    uri = str(work / "appenders.lance")
    lance.write_dataset(_table(0, 100), uri, mode="create", data_storage_version="2.1")
    expected = set(range(100))
    stats = {
        "appenders": appenders,
        "deleters": deleters,
        "rounds": rounds,
        "appends": 0,
        "rows_appended": 0,
        "rows_deleted": 0,
        "compactions": 0,
        "commit_retries": 0,
        "conflicts": 0,
        "pylance_append_retries": 0,
        "pylance_delete_failures": 0,
        "rows_lost": 0,
        "rows_resurrected": 0,
        "rows_duplicated": 0,
    }
    rnd = random.Random(seed)
    started = time.monotonic()
    for r in range(rounds):
        queue, del_queue, stop = SPAWN.Queue(), SPAWN.Queue(), SPAWN.Event()
        procs = [SPAWN.Process(target=_appender, args=(uri, w, r, appends, rows, queue)) for w in range(appenders)]
        pool = sorted(expected)
        dels = [
            SPAWN.Process(
                target=_deleter, args=(uri, rnd.sample(pool, min(len(pool), 400)), seed * 1000 + r * 10 + d, stop, del_queue)
            )
            for d in range(deleters)
        ]
        for p in procs + dels:
            p.start()
        while any(p.is_alive() for p in procs):
            try:
                report = compact(uri, CompactionOptions(target_rows_per_fragment=50_000))
                stats["compactions"] += report.version is not None
                stats["commit_retries"] += report.retries
            except CommitConflictError:
                stats["conflicts"] += 1
        for p in procs:
            p.join()
            if p.exitcode != 0:
                raise SystemExit(f"appender exited with {p.exitcode}")
        stats["pylance_append_retries"] += sum(queue.get()["failures"] for _ in procs)
        stop.set()
        deleted: set[int] = set()
        for _ in dels:
            out = del_queue.get()
            deleted |= set(out["deleted"])
            stats["pylance_delete_failures"] += out["failures"]
        for p in dels:
            p.join()
        try:
            compact(uri, CompactionOptions(target_rows_per_fragment=50_000))
        except CommitConflictError:
            stats["conflicts"] += 1
        expected -= deleted
        stats["rows_deleted"] += len(deleted)
        expected |= {((r * 100 + w + 1) * 1_000_000) + i for w in range(appenders) for i in range(appends * rows)}
        stats["appends"] += appenders * appends
        stats["rows_appended"] += appenders * appends * rows
        ids = lance.dataset(uri).to_table(columns=["id"])["id"].to_pylist()
        stats["rows_lost"] += len(expected - set(ids))
        stats["rows_resurrected"] += len(set(ids) - expected)
        stats["rows_duplicated"] += len(ids) - len(set(ids))
    stats["versions"], stats["fragment_id_reuse"] = _fragment_id_violations(uri)
    stats["final_fragments"] = len(lance.dataset(uri).get_fragments())
    stats["seconds"] = round(time.monotonic() - started, 1)
    return stats


# --- 2. random kills -----------------------------------------------------------------------------
def _compact_child(uri: str, throttle: float) -> None:
    """Runs in a subprocess: a compaction slowed down evenly (a sleep before every storage call)."""
    import functools

    from lance_assets.engine.compaction import compact
    from lance_assets.engine.options import CompactionOptions
    from lance_assets.io.storage import Storage

    def slowed(fn):  # type: ignore[no-untyped-def]
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            time.sleep(throttle)
            return fn(*args, **kwargs)

        return wrapper

    for name in ("read", "write", "create", "exists", "list", "copy_range", "delete", "size"):
        setattr(Storage, name, slowed(getattr(Storage, name)))
    print("ready", flush=True)
    compact(uri, CompactionOptions(target_rows_per_fragment=10_000_000))
    print("done", flush=True)


def _spawn_child(uri: Path, throttle: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, "_compact_child", str(uri), str(throttle)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def random_kills(work: Path, kills: int, seed: int, throttle: float = 0.01) -> dict[str, Any]:
    import lance

    from lance_assets.engine.compaction import compact
    from lance_assets.engine.dataset import Dataset, list_versions
    from lance_assets.engine.maintenance.cleanup import cleanup
    from lance_assets.engine.options import CompactionOptions
    from lance_assets.io import Storage

    warnings.simplefilter("ignore")
    rnd = random.Random(seed)
    pristine = work / "kill-pristine.lance"
    sizes = [20_000] * 8
    for i, n in enumerate(sizes):
        lance.write_dataset(_table(i * 20_000, n), str(pristine), mode="append" if i else "create", data_storage_version="2.1")
    old_version = lance.dataset(str(pristine)).version
    expected = lance.dataset(str(pristine)).to_table().sort_by("id")

    probe = work / "kill-probe.lance"
    shutil.copytree(pristine, probe)
    proc = _spawn_child(probe, throttle)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    assert proc.stdout.readline().strip() == "done", proc.communicate()
    duration = time.monotonic() - t0
    proc.communicate()
    shutil.rmtree(probe)

    stats = {
        "kills": kills,
        "compaction_seconds": round(duration, 3),
        "old_version": 0,
        "new_version": 0,
        "illegal": 0,
        "orphans_removed": 0,
        "orphan_bytes": 0,
        "recovered": 0,
    }
    for i in range(kills):
        uri = work / f"kill-{i}.lance"
        shutil.copytree(pristine, uri)
        proc = _spawn_child(uri, throttle)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rnd.uniform(0, duration * 1.1))
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
        try:
            ds = lance.dataset(str(uri))
            legal = ds.version in (old_version, old_version + 1) and ds.to_table().sort_by("id").equals(expected)
            legal &= Dataset.open(str(uri)).version == ds.version
            legal &= all(lance.dataset(str(uri), version=v).count_rows() == sum(sizes[:v]) for v in range(1, old_version + 1))
            stats["new_version" if ds.version > old_version else "old_version"] += 1
            report = cleanup(str(uri), older_than=timedelta(seconds=0), retain_versions=None)
            stats["orphans_removed"] += len(report.files)
            stats["orphan_bytes"] += report.bytes
            storage = Storage(str(uri))
            referenced = {
                f"data/{df.path}"
                for loc in list_versions(storage)
                for f in Dataset.open(storage, loc.version).manifest.fragments
                for df in f.files
            }
            legal &= {f"data/{p.name}" for p in (uri / "data").iterdir()} == referenced
            compact(str(uri), CompactionOptions(target_rows_per_fragment=10_000_000))
            legal &= lance.dataset(str(uri)).to_table().sort_by("id").equals(expected)
            stats["recovered"] += legal
        except Exception as exc:
            legal = False
            print(f"kill {i}: {type(exc).__name__}: {exc}", file=sys.stderr)
        stats["illegal"] += not legal
        shutil.rmtree(uri)
    return stats


# --- 3. fuzzing ---------------------------------------------------------------------------------
def fuzz(work: Path, cases: int, seed: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    import pickle

    from tests.support import fuzzing  # samples, mutations, parser consumers

    samples = fuzzing.build_samples(work / "fuzz")
    blob = work / "fuzz-samples.pickle"
    blob.write_bytes(pickle.dumps(samples))
    code = f"""
import json, pickle, resource, sys
sys.path.insert(0, {str(ROOT)!r})
from tests.support import fuzzing
samples = pickle.loads(open({str(blob)!r}, "rb").read())
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 512 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
print(json.dumps(fuzzing.campaign(samples, {cases}, {seed})))
"""
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        return {"cases": cases, "bugs": [f"campaign crashed: {out.stderr[-1000:]}"]}
    report = json.loads(out.stdout)
    per_kind = {k: sum(v.values()) for k, v in report["stats"].items()}
    typed = sum(n for v in report["stats"].values() for k, n in v.items() if k.startswith("typed:"))
    parsed = sum(v.get("ok", 0) for v in report["stats"].values())
    return {
        "cases": cases,
        "seed": seed,
        "parsers": len(per_kind),
        "typed_errors": typed,
        "parsed_anyway": parsed,
        "bugs": report["bugs"],
        "seconds": round(time.monotonic() - started, 1),
        "address_space_limit": "+512 MiB",
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_compact_child":
        _compact_child(sys.argv[2], float(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--appenders", type=int, default=3, help="concurrent pylance appender processes")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--appends-per-round", type=int, default=15, help="appends per appender per round")
    parser.add_argument("--rows-per-append", type=int, default=100)
    parser.add_argument("--deleters", type=int, default=1, help="concurrent pylance processes deleting single rows")
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--fuzz-cases", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lance-assets-stress-"))
    try:
        result = {
            "appenders": appenders_vs_compactions(
                work, args.appenders, args.rounds, args.appends_per_round, args.rows_per_append, args.deleters, args.seed
            ),
            "kills": random_kills(work, args.kills, args.seed),
            "fuzz": fuzz(work, args.fuzz_cases, args.seed),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ok = (
        result["appenders"]["rows_lost"] == 0
        and result["appenders"]["rows_duplicated"] == 0
        and result["appenders"]["rows_resurrected"] == 0
        and result["appenders"]["fragment_id_reuse"] == 0
        and result["kills"]["illegal"] == 0
        and not result["fuzz"]["bugs"]
    )
    result["ok"] = ok
    if args.json:
        print(json.dumps(result))
        return 0 if ok else 1
    a, k, f = result["appenders"], result["kills"], result["fuzz"]
    print(
        f"appenders: {a['appenders']} pylance appender + {a['deleters']} deleter processes x {a['rounds']} rounds: {a['appends']} appends "
        f"({a['rows_appended']:,} rows), {a['rows_deleted']} single-row deletes vs {a['compactions']} compactions committed; "
        f"commit retries {a['commit_retries']}, conflicts {a['conflicts']}, pylance append retries {a['pylance_append_retries']}, "
        f"pylance delete failures {a['pylance_delete_failures']}; rows lost {a['rows_lost']}, resurrected {a['rows_resurrected']}, "
        f"duplicated {a['rows_duplicated']}, "
        f"fragment ids reused {a['fragment_id_reuse']} over {a['versions']} versions; {a['final_fragments']} fragments left; {a['seconds']}s"
    )
    print(
        f"kills: {k['kills']} SIGKILLs during a {k['compaction_seconds']}s compaction: {k['old_version']} left the old version, "
        f"{k['new_version']} the new one, {k['illegal']} illegal states; cleanup removed {k['orphans_removed']} orphans "
        f"({k['orphan_bytes']:,} bytes); {k['recovered']} recovered (cleanup + compaction + pylance check)"
    )
    print(
        f"fuzz: {f['cases']:,} cases over {f.get('parsers', '?')} parsers ({f.get('typed_errors', 0):,} typed errors, "
        f"{f.get('parsed_anyway', 0):,} still parsed), {len(f['bugs'])} bugs, address space limited to {f.get('address_space_limit')}; {f.get('seconds')}s"
    )
    for bug in f["bugs"][:20]:
        print("  BUG", bug)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
