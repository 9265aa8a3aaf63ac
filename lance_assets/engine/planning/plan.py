"""Which fragments to merge, into how many files, and why the others are left alone.

Planning runs in stages, each in the module named for it: the candidates and why the others
are left alone (``engine.planning.candidates``), then bins of neighbours that may share a file, cut
into groups that become tasks, and the output files each writes (here). It reads the manifest
only, so it is fast on datasets with 100,000 fragments and safe to run from a sensor, except
where the plan must say what the copy will do from the data files themselves
(``engine.planning.plan_files``: nested lists below structs in 2.1+, blob columns, small pages). It
follows Lance's own candidate selection and binning (docs/how-it-works.md), and additionally
simulates the output files so that a task which would not reduce the number of fragments is
never run. The plan itself is data (``engine.planning.tasks``).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from lance_assets._proto import table_pb2
from lance_assets.engine.copying.reencode import blob_reencode_refusal
from lance_assets.engine.dataset import Dataset, DatasetRef, open_dataset
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.planning.candidates import Candidates
from lance_assets.engine.planning.plan_files import FileSplitter, why_not_reencode
from lance_assets.engine.planning.tasks import CompactionPlan, CompactionTask, OutputFile, PlanSplit, fragment_file_count
from lance_assets.engine.report import Reason, SkippedFragment
from lance_assets.engine.rows import live_rows
from lance_assets.format import manifest as mf

__all__ = ["CompactionPlan", "CompactionTask", "OutputFile", "PlanSplit", "fragment_file_count", "plan_compaction"]


logger = logging.getLogger(__name__)


# Legacy (0.x) files count rows per batch in int32 (Metadata.batch_offsets).
LEGACY_MAX_ROWS_PER_FILE = 2**31 - 1


# --- planning ----------------------------------------------------------------------
def plan_compaction(
    uri: DatasetRef, options: CompactionOptions | None = None, *, storage_options: Mapping[str, Any] | None = None
) -> CompactionPlan:
    """Plan a compaction of the latest version (or of the given open Dataset).

    Planning writes nothing and reads little (the manifest; file metadata only for legacy,
    nested-list and blob datasets), so it can run from a sensor or a dry run, and the plan is small
    enough to ship to other machines: :func:`~lance_assets.engine.copying.copy.execute_task` runs its
    tasks anywhere, :func:`~lance_assets.engine.committing.commit.commit_compaction` commits them.

    Args:
        uri: The dataset: a URI, an open Dataset (planned at its version) or a Storage.
        options: What to merge and how; default ``CompactionOptions()``.
        storage_options: Filesystem options (credentials, endpoint) that open a URI; the plan
            carries them (never serialised) so that its tasks open the dataset anywhere.

    Returns:
        The tasks (groups of neighbouring fragments and the files each becomes) and every
        fragment left alone with its reason (``skipped``). A dataset that cannot be compacted
        by copy at all (e.g. blob columns of a legacy dataset) gives a plan without tasks, not an error.

    Raises:
        NotADatasetError: ``uri`` holds no Lance dataset.
        UnknownFeatureFlagError: The manifest sets a reader or writer flag we do not
            implement (writing a version there could corrupt it).
        LanceAssetsError: Storage or corruption errors while reading (a typed subclass).

    Examples:
        >>> from lance_assets.engine import CompactionOptions, plan_compaction
        >>> plan = plan_compaction("/data/events.lance", CompactionOptions(target_rows_per_fragment=500_000))
        >>> len(plan.tasks), plan.fragments_to_compact, plan.bytes_to_read
        >>> [(s.fragment_id, s.reason) for s in plan.skipped][:3]
    """
    options = options or CompactionOptions()
    ds = open_dataset(uri, storage_options)
    ds.storage.max_in_flight = options.max_concurrent_requests
    mf.check_feature_flags(ds.manifest, path=ds.uri, for_write=True)
    found = Candidates.find(ds, options)
    if isinstance(found, CompactionPlan):
        return _logged(replace(found, storage_options=dict(ds.storage.storage_options)), len(ds.fragments))
    builder = _TaskBuilder(ds, options, found)
    for bin_ in _bins(found.candidates):
        for piece in builder.layers.split(bin_, found.skipped, builder.splits):
            for group in builder.groups(piece):
                builder.add(group, bin_)
    skipped = sorted(found.skipped, key=lambda s: -1 if s.fragment_id is None else s.fragment_id)
    plan = CompactionPlan(
        ds.uri,
        ds.version,
        mf.storage_version_name(ds.storage_version),
        tuple(builder.tasks),
        tuple(skipped),
        options,
        tuple(builder.splits),
        tuple(builder.notes),
        dict(ds.storage.storage_options),
    )
    return _logged(plan, len(ds.fragments))


class _TaskBuilder:
    """Planning's second stage: bins of candidates cut into groups, each group a task (or its
    fragments left alone, saying why), within the source-fragment budget."""

    def __init__(self, ds: Dataset, options: CompactionOptions, found: Candidates) -> None:
        self.ds, self.options, self.found = ds, options, found
        if ds.storage_version == mf.LEGACY:
            # The inputs' rows go into one file whose batch offsets are int32.
            self.options_for_outputs = replace(options, max_rows_per_file=min(options.row_cap, LEGACY_MAX_ROWS_PER_FILE))
        else:
            self.options_for_outputs = options
        # Why nothing can be re-encoded ("" when pylance may): importing pylance only when asked.
        why_not = functools.cache(lambda: blob_reencode_refusal(ds.manifest.fields) or why_not_reencode(options))
        self.why_not_reencode = "" if not found.over else why_not()
        self.layers = FileSplitter(ds, why_not, frozenset(found.keep_deleted))
        self.source_budget = options.max_source_fragments
        self.capped = options.max_rows_per_file is not None or options.max_bytes_per_file is not None
        self.packed_alone: set[int] = set()
        self.data_bytes: dict[int, int] = {}  # fragment id -> bytes (may need a size request each: ask once)
        self.tasks: list[CompactionTask] = []
        self.splits: list[PlanSplit] = []
        self.notes: list[SkippedFragment] = []

    def sizes_of(self, frags: Sequence[table_pb2.DataFragment]) -> dict[int, int]:
        for f in frags:
            if f.id not in self.data_bytes:
                self.data_bytes[f.id] = self.ds.data_bytes(f.files, exact=self.options.max_bytes_per_file is not None)
        return {f.id: self.data_bytes[f.id] for f in frags}

    def groups(self, piece: list[table_pb2.DataFragment]) -> Iterable[list[table_pb2.DataFragment]]:
        """Lance's split by target; under a row or byte cap, next-fit packing of the whole piece
        instead (one group per output file), so a cap never leaves a full and a remainder file
        where whole inputs fit in fewer."""
        forced = self.layers.forced_reencode([f.id for f in piece])
        if not self.capped or forced or (not self.why_not_reencode and any(f.id in self.found.over for f in piece)):
            yield from _split_by_target(piece, self.options.target_rows_per_fragment)
            return
        by_id = {f.id: f for f in piece}
        for output in _outputs(piece, self.sizes_of(piece), self.options_for_outputs):
            if len(output.fragment_ids) == 1:
                self.packed_alone.add(output.fragment_ids[0])
            yield [by_id[i] for i in output.fragment_ids]

    def add(self, group: list[table_pb2.DataFragment], bin_: list[table_pb2.DataFragment]) -> None:
        """One group: a task, or its fragments skipped with the reason."""
        options, found, skipped = self.options, self.found, self.found.skipped
        ids = [f.id for f in group]
        heavy = [i for i in ids if i in found.over]
        forced = self.layers.forced_reencode(ids)
        reencode = bool(forced) or (bool(heavy) and not self.why_not_reencode)
        # Why the deleted rows stay ("" when they go, or nothing is heavy): re-encoding only to
        # drop deleted rows may not leave more fragments than it reads (a row cap can cut the
        # live rows into more files than there were inputs).
        why_kept = self.why_not_reencode
        per_file: int | None = None
        if reencode and not forced:
            per_file, more = _rows_per_file_for_deletions(group, options)
            if per_file is None:
                reencode, why_kept = False, more
        healing = [i for i in ids if i in found.heal]
        if len(group) < 2 and not reencode and not healing:
            skipped.extend(self._alone(group, bin_, bool(heavy), why_kept))
            return
        sizes = self.sizes_of(group)
        if reencode:
            outputs = _reencode_outputs(group, sizes, options, per_file)
        else:
            outputs = _outputs(group, sizes, self.options_for_outputs)
        if not reencode and not healing and len(outputs) >= len(group):
            detail = "the size limits leave every input in a file of its own"
            skipped.extend(SkippedFragment(i, Reason.NO_REDUCTION, detail) for i in ids)
            return
        if self.source_budget is not None and len(group) > self.source_budget:
            detail = f"limit of {options.max_source_fragments} source fragments reached"
            skipped.extend(SkippedFragment(i, Reason.MAX_SOURCE_FRAGMENTS, detail) for i in ids)
            self.source_budget = 0
            return
        if self.source_budget is not None:
            self.source_budget -= len(group)
        self.tasks.append(
            CompactionTask(
                task_id=len(self.tasks),
                fragment_ids=tuple(ids),
                rows=sum(f.physical_rows for f in group),
                bytes=sum(sizes.values()),
                outputs=outputs,
                files=sum(fragment_file_count(f) for f in group),
                reencode=reencode,
            )
        )
        notes = self.notes
        if heavy and not reencode:
            kept = (f for f in group if f.id in found.over)
            notes.extend(SkippedFragment(f.id, Reason.DELETIONS_KEPT, _heavy_detail(f, options, why_kept)) for f in kept)
        notes.extend(SkippedFragment(i, Reason.DELETIONS_KEPT, found.held_heavy[i]) for i in ids if i in found.held_heavy)
        notes.extend(SkippedFragment(i, Reason.REENCODED, f"re-encoded with the fragment before it: {why}") for i, why in forced)
        if not reencode:
            self.notes.extend(SkippedFragment(i, Reason.SMALL_PAGES, found.heal[i]) for i in healing)

    def _alone(
        self, group: list[table_pb2.DataFragment], bin_: list[table_pb2.DataFragment], heavy: bool, why_kept: str
    ) -> list[SkippedFragment]:
        """Why a group of one fragment (or none) that nothing rewrites is left alone."""
        ids = [f.id for f in group]
        alone = self.layers.alone.get(ids[0]) if ids else None
        if ids[0] in self.packed_alone and len(bin_) > 1:
            return [SkippedFragment(ids[0], Reason.NO_REDUCTION, "the size limits leave this input in a file of its own")]
        if heavy or ids[0] in self.found.held_heavy:
            detail = self.found.held_heavy.get(ids[0]) or _heavy_detail(group[0], self.options, why_kept)
            return [SkippedFragment(ids[0], Reason.MATERIALIZE_DELETIONS, detail)]
        if alone is not None:
            return [SkippedFragment(ids[0], self.layers.reason, alone)]
        detail = "no adjacent small fragment with the same layout and indices"
        return [SkippedFragment(i, Reason.NO_NEIGHBOUR, detail) for i in ids]


def _logged(plan: CompactionPlan, considered: int) -> CompactionPlan:
    """Say what ``plan`` decided, for operators who read logs rather than the JSON report: one
    INFO line (groups formed, fragments left alone by reason), each group, split and fragment
    left alone at DEBUG -- the same facts as the plan's ``tasks``, ``splits``, ``skipped`` and
    ``notes``."""
    reasons = Counter(s.reason.value for s in plan.skipped)
    logger.info(
        "plan %s at version %d: %d fragments considered, %d groups formed from %d fragments "
        "(%d re-encoded, %d bytes to read), %d left alone%s",
        plan.uri,
        plan.read_version,
        considered,
        len(plan.tasks),
        plan.fragments_to_compact,
        sum(len(t.fragment_ids) for t in plan.tasks if t.reencode),
        plan.bytes_to_read,
        len(plan.skipped),
        f" ({', '.join(f'{reason}: {n}' for reason, n in sorted(reasons.items()))})" if reasons else "",
    )
    if not logger.isEnabledFor(logging.DEBUG):
        return plan  # 100,000 fragments: no per-fragment strings unless someone reads them
    for task in plan.tasks:
        logger.debug(
            "group %d: fragments %s -> %d file(s), %d rows, %d bytes, by %s",
            task.task_id,
            list(task.fragment_ids),
            len(task.outputs),
            task.rows,
            task.bytes,
            "re-encode" if task.reencode else "binary copy",
        )
    for split in plan.splits:
        logger.debug(
            "fragments %d and %d kept apart: %s%s",
            split.left_fragment_id,
            split.right_fragment_id,
            split.reason,
            f" ({split.detail})" if split.detail else "",
        )
    for entry, what in [*((s, "left alone") for s in plan.skipped), *((n, "merged with a caveat") for n in plan.notes)]:
        who = "the run" if entry.fragment_id is None else f"fragment {entry.fragment_id}"
        logger.debug("%s %s: %s%s", who, what, entry.reason.value, f" ({entry.detail})" if entry.detail else "")
    return plan


def _heavy_detail(frag: table_pb2.DataFragment, options: CompactionOptions, why: str) -> str:
    deleted = frag.deletion_file.num_deleted_rows
    return (
        f"{deleted} of {frag.physical_rows} rows deleted (over {options.materialize_deletions_threshold:.0%}); "
        f"binary copy keeps them as a deletion file: {why}"
    )


def _rows_per_file_for_deletions(group: list[table_pb2.DataFragment], options: CompactionOptions) -> tuple[int | None, str]:
    """Rows per file for re-encoding ``group`` only to drop its deleted rows, and why not (None).

    Such a rewrite may not leave more fragments than it reads: where the target would cut the
    live rows into more files than inputs, fewer and larger files are written (the target is
    what makes a fragment small, not a cap); where only the row cap does, the group is left as
    it is, with its deletion files.
    """
    live = live_rows(group)
    per = options.rows_per_reencoded_file(live)
    inputs = len(group)
    if live <= per * inputs:
        return per, ""
    fewer = -(-live // inputs)
    if fewer <= options.row_cap:
        return fewer, ""
    files = -(-live // options.row_cap)
    return None, (
        f"re-encoding would cut its {live:,} live rows into {files} files of at most {options.row_cap:,} rows "
        f"(max_rows_per_file), more fragments than the {inputs} it reads"
    )


def _reencode_outputs(
    group: list[table_pb2.DataFragment], sizes: dict[int, int], options: CompactionOptions, per: int | None = None
) -> tuple[OutputFile, ...]:
    """The files a re-encode of ``group`` writes: its live rows cut every ``per`` rows (by
    default ``options.rows_per_reencoded_file(live)``).

    Each output names every input (rows are re-cut, not copied file by file); bytes are estimated
    in proportion to the live rows.
    """
    ids = tuple(f.id for f in group)
    live = live_rows(group)
    physical = sum(f.physical_rows for f in group) or 1
    size = sum(sizes.values()) * live // physical
    per = per or options.rows_per_reencoded_file(live)
    counts = [per] * (live // per) + ([live % per] if live % per or not live else [])
    return tuple(OutputFile(ids, n, size * n // max(live, 1)) for n in counts)


def _bins(candidates: Sequence[tuple[table_pb2.DataFragment, Any] | None]) -> Iterable[list[table_pb2.DataFragment]]:
    """Runs of consecutive candidates with equal bin keys."""
    current: list[table_pb2.DataFragment] = []
    key: Any = object()
    for item in candidates:
        if item is None or item[1] != key:
            if current:
                yield current
            current = []
        if item is not None:
            current.append(item[0])
            key = item[1]
    if current:
        yield current


def _split_by_target(bin_: list[table_pb2.DataFragment], target: int) -> Iterable[list[table_pb2.DataFragment]]:
    """Lance's greedy split: cut once a group reaches the target, if the rest reaches it too."""
    remaining = sum(f.physical_rows for f in bin_)
    group: list[table_pb2.DataFragment] = []
    rows = 0
    for frag in bin_:
        group.append(frag)
        rows += frag.physical_rows
        remaining -= frag.physical_rows
        if rows >= target and remaining >= target:
            yield group
            group, rows = [], 0
    if group:
        yield group


def _outputs(group: list[table_pb2.DataFragment], sizes: dict[int, int], options: CompactionOptions) -> tuple[OutputFile, ...]:
    """Split a group into output files at input boundaries (pages line up nowhere else): a file
    closes at the target when the rest of the group reaches the target too (so no small
    remainder file is left, as in Lance's bin split), and before any input that would take it
    over a row or byte cap."""
    outputs: list[OutputFile] = []
    ids: list[int] = []
    rows = size = 0
    remaining = sum(f.physical_rows for f in group)
    deletions = False
    byte_cap, row_cap, target = options.max_bytes_per_file, options.row_cap, options.target_rows_per_fragment
    for frag in group:
        fid = frag.id
        frag_rows, frag_bytes = frag.physical_rows, sizes[fid]
        over_rows = rows + frag_rows > row_cap
        over_bytes = byte_cap is not None and size + frag_bytes > byte_cap
        if ids and (over_rows or over_bytes):
            outputs.append(OutputFile(tuple(ids), rows, size, deletions))
            ids, rows, size, deletions = [], 0, 0, False
        ids.append(fid)
        rows += frag_rows
        size += frag_bytes
        deletions = deletions or (frag.HasField("deletion_file") and frag.deletion_file.num_deleted_rows > 0)
        remaining -= frag_rows
        if rows >= target and remaining >= target:
            outputs.append(OutputFile(tuple(ids), rows, size, deletions))
            ids, rows, size, deletions = [], 0, 0, False
    if ids:
        outputs.append(OutputFile(tuple(ids), rows, size, deletions))
    return tuple(outputs)
