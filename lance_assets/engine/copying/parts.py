"""Helper processes that share one output file's inputs.

Merging thousands of small files is bound by per-file work done in Python (reading and checking
each file's metadata, keeping its small pages), and one process uses one core. So when an output
merges many files, its task starts helper processes at once and goes on copying; when they are
ready (an interpreter start and the dataset's manifest: about 0.2 s) the inputs not yet copied
are cut into contiguous shares, one per process. Each helper writes its share as a part file
(a complete Lance file of the output's schema) in a local scratch folder; the task appends the
parts' data regions and pages after its own, in input order, so rows keep their order and the
output is the file one process would have written, up to a page boundary per share.

A helper is only an accelerator: if it fails to start, dies or reports an error, the task copies
that share itself (a real problem with an input then raises there, typed, as it would have).
Nothing here knows what a part holds: the request and the result are JSON objects the copy
(``copy.PartJob``) defines, sent as lines over the helper's stdin and stdout.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

logger = logging.getLogger(__name__)

#: An output merging fewer input files than this (and fewer column chunks than
#: ``MIN_COLUMN_CHUNKS``) is written by its task's process alone: a helper is ready about 0.25 s
#: after it starts, by when the task has copied about a thousand small files (about 200 us
#: each), so below this it could only cost its start.
MIN_INPUTS = 1024
#: The same for an output of fewer, wider files: every input column chunk (a file's pages of one
#: column) costs the task about 50-120 us (its pages kept, decoded and re-cut), so 6,000 of them
#: keep one process busy for about half a second, twice the helper's start. (Measured: 100 files
#: of 200 columns, 1.7-2.1 s alone, 1.3 s with a helper.)
MIN_COLUMN_CHUNKS = 6000


def worth_helpers(files: int, columns: int) -> bool:
    """Whether an output merging ``files`` input files of ``columns`` columns each is work enough
    for helpers to pay for their start (and leaves them at least a share)."""
    return files >= 2 * MIN_SHARE and (files >= MIN_INPUTS or files * columns >= MIN_COLUMN_CHUNKS)


#: A share smaller than this many input fragments is not given to a helper.
MIN_SHARE = 32
#: How long ``ready`` may wait for the helpers (0: it never waits, the task goes on copying;
#: tests that must see a share raise it).
READY_TIMEOUT = 0.0
#: The module a helper process runs.
HELPER_MODULE = "lance_assets.engine.copying.part_main"


#: glibc's ``mallopt`` parameters (malloc.h) and the values ``tune_allocator`` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 64 << 20
_TRIM_THRESHOLD = 128 << 20


def tune_allocator() -> bool:
    """Have this process's C allocator keep the memory a copy frees for the next allocation.

    Re-cutting pages allocates and frees arrays of a few MiB per column all along. glibc hands
    out blocks above its mmap threshold (128 KiB at start, raised by each free up to 32 MiB)
    from fresh mappings and gives freed heap back to the OS above its trim threshold, so a
    process that copies once pays a page fault per 4 KiB it allocates: measured, 230,000 faults
    and 0.5 s of system time in a 1.35 s compaction of 1,000 files of 1,000 rows, against 20,000
    and 0.08 s (0.9 s in all, the same peak RSS) with these thresholds. Called where a process
    exists to compact (the CLI's compaction, helper processes, task workers, Dagster's compaction
    steps); another host process can set the same
    with ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` in its environment. Returns
    whether the allocator took them (False off glibc)."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


#: Whether ``usable_processes`` leaves out CPUs other work keeps busy (tests that must see a
#: share turn it off: their machine's load is not theirs to choose).
LOAD_AWARE = True


def usable_processes(wanted: int) -> int:
    """``wanted`` processes, at most as many as this process may run on (its CPU affinity) and,
    with ``LOAD_AWARE``, as the CPUs other work leaves idle (the last minute's load average,
    this process counted as one): on a busy machine a helper only competes for the same core."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    free = cpus
    if LOAD_AWARE:
        try:
            others = max(0.0, os.getloadavg()[0] - 1.0)
        except (AttributeError, OSError):  # no load average on this system
            others = 0.0
        free = int(cpus - others + 0.5)
    return max(1, min(wanted, cpus, free))


@dataclass
class Share:
    """Input fragments ``[first, stop)`` of the output, given to one helper to write at ``path``."""

    first: int
    stop: int
    path: str
    result: dict[str, Any] | None = None  # the helper's report, once it finished well
    error: str = ""  # why the share falls back to the task's own process


@dataclass
class _Helper:
    process: subprocess.Popen[bytes]
    lines: queue.Queue[bytes | None]
    stderr: IO[bytes]
    ready: bool = False
    failed: str = ""
    share: Share | None = None
    reader: threading.Thread | None = field(default=None, repr=False)


def _spawn() -> _Helper:
    """A helper process: it imports what it needs, then waits for its request."""
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 (the helper's, closed with it)
    # the helper imports the modules this process imported (its sys.path, not only the installed ones)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", HELPER_MODULE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env
        )
    except BaseException:
        stderr.close()
        raise
    lines: queue.Queue[bytes | None] = queue.Queue()
    assert process.stdout is not None
    helper = _Helper(process, lines, stderr)
    stdout = process.stdout

    def read() -> None:
        for raw in stdout:
            lines.put(raw)
        lines.put(None)  # the helper closed its output: it has ended

    helper.reader = threading.Thread(target=read, name="lance-assets-part-helper", daemon=True)
    helper.reader.start()
    return helper


_early: list[_Helper] = []  # started before their request (``start_early``), not taken yet
_early_lock = threading.Lock()


def start_early(count: int) -> None:
    """Start ``count`` helpers now, before the output that will use them is known (while the
    run plans), so that they are ready sooner; ``PartHelpers`` takes them first."""
    with _early_lock:
        _early.extend(_spawned(count - len(_early)))


def _spawned(count: int) -> list[_Helper]:
    """Up to ``count`` new helpers (fewer when the OS refuses a process: the work is shared by fewer)."""
    out: list[_Helper] = []
    for _ in range(count):
        try:
            out.append(_spawn())
        except OSError as exc:
            logger.info("no helper process started (%s)", exc)
            break
    return out


def stop_early() -> None:
    """End the helpers ``start_early`` started that no output took."""
    with _early_lock:
        left = _early[:]
        del _early[:]
    for helper in left:
        _close(helper)


class PartHelpers:
    """Helper processes for one output file (``count`` of them, taken from those started early
    first), each sent ``request``."""

    def __init__(self, request: Mapping[str, Any], count: int, scratch: str) -> None:
        self._scratch = scratch
        self._helpers: list[_Helper] = []
        try:
            line = (json.dumps(request) + "\n").encode()
        except (TypeError, ValueError) as exc:  # e.g. storage options holding objects: no helpers
            logger.info("no helper processes: their request does not serialise (%s)", exc)
            return
        with _early_lock:
            taken = _early[:count]
            del _early[:count]
        taken += _spawned(count - len(taken))
        for helper in taken:
            _send(helper, line, "request", last=False)
            self._helpers.append(helper)

    def __bool__(self) -> bool:
        return bool(self._helpers)

    def ready(self) -> bool:
        """Whether every helper has said it is ready (or has failed): the moment to share out
        the inputs left. Waits at most ``READY_TIMEOUT`` seconds."""
        for helper in self._helpers:
            while not (helper.ready or helper.failed):
                try:
                    raw = helper.lines.get(timeout=READY_TIMEOUT) if READY_TIMEOUT else helper.lines.get_nowait()
                    message = _message(raw, helper)
                except queue.Empty:
                    return False
                if message is not None and message.get("ready"):
                    helper.ready = True
        return True

    def share_out(self, first: int, stop: int) -> int:
        """Cut the inputs ``[first, stop)`` not copied yet into one share per process (this one's
        first), send the helpers theirs, and return where this process's share ends. Helpers
        that failed, or shares too small to pay, are left out."""
        ready = [h for h in self._helpers if h.ready and not h.failed]
        for helper in self._helpers:
            if helper.failed:
                logger.info("a helper process is left out: %s", helper.failed)
        parts = min(len(ready) + 1, (stop - first) // MIN_SHARE)
        if parts < 2:
            self.close()
            return stop
        bounds = [first + (stop - first) * k // parts for k in range(parts + 1)]
        logger.debug("inputs %d-%d shared out among %d processes: %s", first, stop - 1, parts, bounds)
        for k, helper in enumerate(ready[: parts - 1], start=1):
            share = Share(bounds[k], bounds[k + 1], os.path.join(self._scratch, f"part-{k}.lance"))
            helper.share = share
            line = (json.dumps({"first": share.first, "stop": share.stop, "path": share.path}) + "\n").encode()
            _send(helper, line, "share", last=True)
        for helper in ready[parts - 1 :] + [h for h in self._helpers if not h.ready or h.failed]:
            _kill(helper)
        return bounds[1]

    def finished(self) -> Iterator[Share]:
        """Each share in input order once its helper has ended: with ``result`` when it wrote its
        part, else with ``error`` (the caller copies that share itself)."""
        for helper in self._helpers:
            share = helper.share
            if share is None:
                continue
            while share.result is None and not share.error:
                message = _message(helper.lines.get(), helper)
                if message is None:
                    share.error = helper.failed or "the helper ended without a result"
                elif "result" in message:
                    share.result = message["result"]
                elif "error" in message:
                    share.error = str(message["error"])
            if share.error:
                logger.info("inputs %d-%d are copied here after all: %s", share.first, share.stop - 1, share.error)
            yield share

    def close(self) -> None:
        """End every helper (a finished one has ended already) and release its pipes."""
        for helper in self._helpers:
            _close(helper)
        self._helpers = []


def _send(helper: _Helper, line: bytes, what: str, *, last: bool) -> None:
    """Write one line to a helper (closing its input after the ``last`` one); a helper that
    cannot take it is marked failed."""
    stdin = helper.process.stdin
    try:
        assert stdin is not None
        stdin.write(line)
        if last:
            stdin.close()
        else:
            stdin.flush()
    except OSError as exc:
        helper.failed = f"the helper did not take its {what}: {exc}"


def _kill(helper: _Helper) -> None:
    if helper.process.poll() is None:
        helper.process.kill()


def _close(helper: _Helper) -> None:
    _kill(helper)
    helper.process.wait()
    for stream in (helper.process.stdin, helper.process.stdout):
        if stream is not None and not stream.closed:
            try:
                stream.close()
            except OSError:
                pass
    if helper.reader is not None:
        helper.reader.join()
    helper.stderr.close()


def _message(raw: bytes | None, helper: _Helper) -> dict[str, Any] | None:
    """One line from a helper as a JSON object; None when the helper has ended (its failure,
    with what it wrote to stderr, recorded on it)."""
    if raw is None:
        if not helper.failed:
            helper.process.wait()
            helper.stderr.seek(0)
            said = helper.stderr.read().decode(errors="replace").strip().splitlines()
            helper.failed = f"the helper ended (exit code {helper.process.returncode}): {said[-1] if said else 'no message'}"
        return None
    try:
        message = json.loads(raw)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}
