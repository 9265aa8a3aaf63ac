"""Indices across a rewrite: Lance's fragment-reuse index, what each index covers, its upkeep.

Lance index entries hold row *addresses* (``fragment id << 32 | row offset``), and a rewrite
moves rows to new addresses. Rewriting every index would cost what compaction saves, so Lance
records the moves instead: the system index ``__lance_frag_reuse`` keeps, per compaction (a
reuse *version*), the old and new fragments of each group and the old addresses of the rows the
new fragments hold, in order. A reader maps old index entries to new addresses through it, and
treats an index's fragment bitmap as if each fully covered group's old ids were its new ids. The
manifest keeps the bitmaps as written; only the reuse index grows. ``optimize_indices`` later
rebuilds the indices on the new addresses, after which a version is no longer needed and is
trimmed (:func:`trim_reuse_index`). The byte-level facts are in ``docs/format.md``.
"""

from __future__ import annotations

import time
import uuid as uuid_mod
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from lance_assets._proto import table_pb2
from lance_assets.engine.dataset import INDICES_DIR, Dataset
from lance_assets.engine.rows import live_rows
from lance_assets.errors import CompactionRefusedError, CorruptFileError, UnsupportedFeatureError
from lance_assets.format.protobuf import has_unknown_fields, parse
from lance_assets.format.roaring import decode_bitmap, encode_bitmap, encode_treemap

REUSE_INDEX_NAME = "__lance_frag_reuse"
SYSTEM_INDEX_PREFIX = "__lance"
REUSE_DETAILS_TYPE_URL = "/lance.table.FragmentReuseIndexDetails"
# Lance stores the reuse content inline while its encoding stays within this many bytes, and
# in an external file under the index's folder above it.
REUSE_INLINE_LIMIT = 204_800
REUSE_DETAILS_FILE = "details.binpb"

INDEX_REMAP_DEFER = "defer"
INDEX_REMAP_DROP = "drop"
INDEX_REMAP_CHOICES = (INDEX_REMAP_DEFER, INDEX_REMAP_DROP)

Details = table_pb2.FragmentReuseIndexDetails


def is_system_index(meta: table_pb2.IndexMetadata) -> bool:
    return meta.name.startswith(SYSTEM_INDEX_PREFIX)


def index_type(meta: table_pb2.IndexMetadata) -> str:
    """A short type name from the details' type URL: ``BTree``, ``Vector``, ``Inverted``, ..."""
    name = meta.index_details.type_url.rsplit("/", 1)[-1].rsplit(".", 1)[-1]
    return name.removesuffix("IndexDetails") or "unknown"


def reuse_index_meta(ds: Dataset) -> table_pb2.IndexMetadata | None:
    for meta in ds.indices:
        if meta.name == REUSE_INDEX_NAME:
            return meta
    return None


def _uuid(meta: table_pb2.IndexMetadata) -> str:
    return str(uuid_mod.UUID(bytes=bytes(meta.uuid.uuid)))


def load_reuse_versions(ds: Dataset, meta: table_pb2.IndexMetadata) -> list[Details.Version]:
    """The reuse versions recorded by ``meta`` (inline or in its external file), oldest first.

    Anything we do not understand -- another details type, an unknown content kind, fields
    newer than ours -- is refused: mapping rows through a misread reuse index answers queries
    wrongly, which is worse than not compacting.
    """
    where = f"{ds.uri} index {meta.name}"
    if meta.index_details.type_url != REUSE_DETAILS_TYPE_URL:
        raise CorruptFileError(f"{meta.name} has details of type {meta.index_details.type_url!r}", path=ds.uri)
    details = parse(Details, meta.index_details.value, path=where, what="fragment-reuse index details")
    kind = details.WhichOneof("content")
    if kind == "inline":
        content = details.inline
    elif kind == "external":
        rel = f"{INDICES_DIR}/{_uuid(meta)}/{details.external.path}"
        raw = ds.storage.read(rel, details.external.offset, details.external.offset + details.external.size)
        if len(raw) != details.external.size:
            raise CorruptFileError(f"holds {len(raw)} bytes, the index says {details.external.size}", path=ds.storage.url(rel))
        content = parse(Details.InlineContent, raw, path=ds.storage.url(rel), what="fragment-reuse index content")
    else:
        raise UnsupportedFeatureError("the fragment-reuse index stores its content in a way this version does not know", path=ds.uri)
    if has_unknown_fields(details) or has_unknown_fields(content):
        raise UnsupportedFeatureError("the fragment-reuse index has fields newer than this version knows", path=ds.uri)
    return sorted(content.versions, key=lambda v: v.dataset_version)


def remap_fragment_ids(ids: Iterable[int], versions: Sequence[Details.Version], *, path: str | None = None) -> set[int]:
    """The fragments an index covers once the reuse versions are applied, as a reader sees them.

    A group whose old fragments the index covers only in part cannot be mapped (pylance fails
    on it), so it is reported as corrupt rather than guessed.
    """
    out = set(ids)
    for version in versions:
        for group in version.groups:
            old = [f.id for f in group.old_fragments]
            hit = sum(1 for i in old if i in out)
            if not hit:
                continue
            if hit != len(old):
                raise CorruptFileError(f"a fragment-reuse group {old} is only partly covered by an index", path=path)
            out.difference_update(old)
            out.update(f.id for f in group.new_fragments)
    return out


@dataclass(frozen=True)
class IndexView:
    """One index segment with the fragments it covers as readers see them (None: every fragment)."""

    meta: table_pb2.IndexMetadata
    fragments: frozenset[int] | None

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def uuid(self) -> str:
        return _uuid(self.meta)


def index_views(ds: Dataset) -> list[IndexView]:
    """Every index segment with its effective fragment coverage (reuse versions applied)."""
    reuse = reuse_index_meta(ds)
    versions = load_reuse_versions(ds, reuse) if reuse is not None else []
    out = []
    for meta in ds.indices:
        if not meta.fragment_bitmap:
            out.append(IndexView(meta, None))
            continue
        ids = decode_bitmap(meta.fragment_bitmap, path=ds.uri)
        out.append(IndexView(meta, frozenset(remap_fragment_ids(ids, versions, path=ds.uri))))
    return out


@dataclass(frozen=True)
class IndexCoverage:
    """What one named index covers; ``unindexed_rows`` is what pylance's ``index_stats`` reports."""

    name: str
    type: str
    fields: list[int]
    indexed_fragments: int
    unindexed_rows: int


def index_coverage(ds: Dataset) -> list[IndexCoverage]:
    """Coverage of every user index (segments of one name together), in manifest order."""
    by_name: dict[str, list[IndexView]] = {}
    for view in index_views(ds):
        if not is_system_index(view.meta):
            by_name.setdefault(view.name, []).append(view)
    out = []
    for name, views in by_name.items():
        if any(v.fragments is None for v in views):
            covered = {f.id for f in ds.manifest.fragments}
        else:
            covered = set().union(*(v.fragments for v in views if v.fragments is not None))
        present = [f for f in ds.manifest.fragments if f.id in covered]
        missing = [f for f in ds.manifest.fragments if f.id not in covered]
        out.append(IndexCoverage(name, index_type(views[0].meta), list(views[0].meta.fields), len(present), live_rows(missing)))
    return out


def total_unindexed_rows(ds: Dataset) -> int:
    return sum(c.unindexed_rows for c in index_coverage(ds))


# --- writing reuse versions --------------------------------------------------------------
def reuse_group(
    old: Sequence[table_pb2.DataFragment],
    new: Sequence[table_pb2.DataFragment],
    kept_offsets: Sequence[Iterable[int]],
) -> Details.Group:
    """The reuse record of one rewrite group.

    ``kept_offsets`` lists, per old fragment, the row offsets whose rows the new fragments
    hold, in order (every physical row for a binary copy, the live rows for a re-encode). A
    reader pairs the sorted old addresses with the new fragments' rows one by one, so the two
    counts must agree; old rows left out map to "deleted".
    """
    addrs: list[int] = []
    for frag, offsets in zip(old, kept_offsets, strict=True):
        base = frag.id << 32
        addrs.extend(base + o for o in offsets)
    physical = sum(f.physical_rows for f in new)
    if len(addrs) != physical:
        raise CompactionRefusedError(
            f"fragments {[f.id for f in old]}: {len(addrs)} carried rows but {physical} new physical rows; "
            "the row moves cannot be recorded"
        )
    group = Details.Group(changed_row_addrs=encode_treemap(addrs, use_runs=True))
    group.old_fragments.extend(_digest(f) for f in old)
    group.new_fragments.extend(_digest(f) for f in new)
    return group


def _digest(frag: table_pb2.DataFragment) -> Details.FragmentDigest:
    deleted = frag.deletion_file.num_deleted_rows if frag.HasField("deletion_file") else 0
    return Details.FragmentDigest(id=frag.id, physical_rows=frag.physical_rows, num_deleted_rows=deleted)


def reuse_index_metadata(
    ds: Dataset,
    previous: table_pb2.IndexMetadata | None,
    versions: Sequence[Details.Version],
    fragment_ids: Iterable[int],
    now: float,
) -> tuple[table_pb2.IndexMetadata, list[tuple[str, bytes]]]:
    """A new ``__lance_frag_reuse`` entry holding ``versions`` and the files it needs written.

    Its ``dataset_version`` is the version it is built on (``ds``). Its bitmap is
    ``fragment_ids``: as in Lance, the new fragments of the compaction that appends a version,
    or of every version kept by a trim.
    """
    new_uuid = uuid_mod.uuid4()
    content = Details.InlineContent()
    content.versions.extend(sorted(versions, key=lambda v: v.dataset_version))
    payload = content.SerializeToString()
    details = Details()
    writes: list[tuple[str, bytes]] = []
    if len(payload) > REUSE_INLINE_LIMIT:
        writes.append((f"{INDICES_DIR}/{new_uuid}/{REUSE_DETAILS_FILE}", payload))
        details.external.path = REUSE_DETAILS_FILE
        details.external.offset = 0
        details.external.size = len(payload)
    else:
        details.inline.CopyFrom(content)
    meta = table_pb2.IndexMetadata(name=REUSE_INDEX_NAME, dataset_version=ds.version)
    meta.uuid.uuid = new_uuid.bytes
    meta.fragment_bitmap = encode_bitmap(fragment_ids)
    meta.index_details.type_url = REUSE_DETAILS_TYPE_URL
    meta.index_details.value = details.SerializeToString()
    meta.index_version = previous.index_version if previous is not None and previous.HasField("index_version") else 0
    meta.created_at = int(now * 1000)
    return meta, writes


def caught_up(version: Details.Version, meta: table_pb2.IndexMetadata) -> bool:
    """Lance's trim rule: ``meta`` no longer needs ``version`` once it was built at or after it
    and its own bitmap names none of the version's old fragments (no bitmap: nothing to check)."""
    if is_system_index(meta):
        return True
    if meta.dataset_version < version.dataset_version:
        return False
    if not meta.fragment_bitmap:
        return True
    covered = set(decode_bitmap(meta.fragment_bitmap))
    return not any(f.id in covered for g in version.groups for f in g.old_fragments)


# --- reports -------------------------------------------------------------------------------
@dataclass(frozen=True)
class IndexUpkeepReport:
    """What :func:`trim_reuse_index` / :func:`maintain_indices` did; JSON keys are public."""

    uri: str
    unindexed_rows_before: int
    unindexed_rows_after: int
    reuse_versions_before: int
    reuse_versions_after: int
    optimized: bool = False
    committed_versions: list[int] = field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def reuse_version_count(ds: Dataset) -> int:
    meta = reuse_index_meta(ds)
    return len(load_reuse_versions(ds, meta)) if meta is not None else 0


def _trim_plan(ds: Dataset) -> tuple[table_pb2.IndexMetadata, list[Details.Version]] | None:
    """The reuse index and the versions to keep, when some can go; None when none can."""
    meta = reuse_index_meta(ds)
    if meta is None:
        return None
    versions = load_reuse_versions(ds, meta)
    kept = [v for v in versions if not all(caught_up(v, m) for m in ds.indices)]
    return None if len(kept) == len(versions) else (meta, kept)


def trim_reuse_index(uri: str | Dataset, storage_options: Mapping[str, Any] | None = None, *, dry_run: bool = False) -> IndexUpkeepReport:
    """Drop the reuse versions every index has caught up with (rebuilt at or after them).

    Commits one CreateIndex replacing ``__lance_frag_reuse`` (kept, possibly empty, as Lance
    keeps it); nothing is committed when no version can go. Other writers committing meanwhile
    are harmless: the decision is taken again on the version we commit on top of.
    """
    from lance_assets.engine.commit import commit_index_change

    started = time.monotonic()
    ds = uri if isinstance(uri, Dataset) else Dataset.open(uri, storage_options=storage_options)
    before = reuse_version_count(ds)
    unindexed = total_unindexed_rows(ds)

    def change(latest: Dataset, now: float) -> tuple[list[table_pb2.IndexMetadata], list[table_pb2.IndexMetadata], list[tuple[str, bytes]]] | None:
        planned = _trim_plan(latest)
        if planned is None:
            return None
        meta, kept = planned
        new_ids = {f.id for v in kept for g in v.groups for f in g.new_fragments}
        new_meta, writes = reuse_index_metadata(latest, meta, kept, new_ids, now)
        return [new_meta], [meta], writes

    committed: list[int] = []
    after = before
    if dry_run:
        planned = _trim_plan(ds)
        if planned is not None:
            after = len(planned[1])
    else:
        version = commit_index_change(ds.storage, change)
        if version is not None:
            committed.append(version)
            after = reuse_version_count(Dataset.open(ds.storage, version))
    return IndexUpkeepReport(
        ds.uri, unindexed, unindexed, before, after,
        committed_versions=committed, seconds=time.monotonic() - started, dry_run=dry_run,
    )


def maintain_indices(uri: str, storage_options: Mapping[str, Any] | None = None) -> IndexUpkeepReport:
    """Rebuild indices over unindexed rows with pylance's ``optimize_indices``, then trim.

    This is the one step that needs pylance (the optional ``reencode`` extra): index files are
    Lance's own formats, which we never write. Without pylance only the trim runs.
    """
    from lance_assets.engine.reencode import pylance_available, pylance_storage_options

    started = time.monotonic()
    ds = Dataset.open(uri, storage_options=storage_options)
    unindexed_before = total_unindexed_rows(ds)
    versions_before = reuse_version_count(ds)
    committed: list[int] = []
    optimized = False
    if pylance_available() and any(not is_system_index(m) for m in ds.indices):
        import lance

        lds = lance.dataset(ds.uri, storage_options=pylance_storage_options(dict(storage_options or {})))
        lds.optimize.optimize_indices()
        optimized = True
        after_optimize = Dataset.open(ds.storage)
        if after_optimize.version > ds.version:
            committed.append(after_optimize.version)
        ds = after_optimize
    trim = trim_reuse_index(ds)
    committed.extend(trim.committed_versions)
    final = Dataset.open(ds.storage)
    return IndexUpkeepReport(
        ds.uri,
        unindexed_before,
        total_unindexed_rows(final),
        versions_before,
        reuse_version_count(final),
        optimized=optimized,
        committed_versions=committed,
        seconds=time.monotonic() - started,
    )
