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

import uuid as uuid_mod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lance_assets._proto import table_pb2
from lance_assets.engine.dataset import INDICES_DIR, Dataset
from lance_assets.engine.rows import live_rows
from lance_assets.errors import CompactionRefusedError, CorruptFileError, UnsupportedFeatureError
from lance_assets.format.protobuf import has_unknown_fields, parse, wire_fields
from lance_assets.format.roaring import decode_bitmap, encode_bitmap, encode_treemap_ranges

REUSE_INDEX_NAME = "__lance_frag_reuse"
SYSTEM_INDEX_PREFIX = "__lance"
REUSE_DETAILS_TYPE_URL = "/lance.table.FragmentReuseIndexDetails"
# Lance stores the reuse content inline while its encoding stays within this many bytes, and
# in an external file under the index's folder above it.
REUSE_INLINE_LIMIT = 204_800
REUSE_DETAILS_FILE = "details.binpb"

INDEX_REMAP_DEFER = "defer"
INDEX_REMAP_DROP = "drop"

Details = table_pb2.FragmentReuseIndexDetails


def is_system_index(meta: table_pb2.IndexMetadata) -> bool:
    return meta.name.startswith(SYSTEM_INDEX_PREFIX)


def index_type(meta: table_pb2.IndexMetadata) -> str:
    """A short type name from the details' type URL: ``BTree``, ``Vector``, ``Inverted``, ..."""
    name = meta.index_details.type_url.rsplit("/", 1)[-1].rsplit(".", 1)[-1]
    return name.removesuffix("IndexDetails") or "unknown"


VECTOR_DETAILS_TYPE_URL = "/lance.index.pb.VectorIndexDetails"
# VectorIndexDetails field holding the HNSW build parameters (present for every IVF_HNSW_* index).
_VECTOR_DETAILS_HNSW_FIELD = 3


def is_vector(meta: table_pb2.IndexMetadata) -> bool:
    return meta.index_details.type_url == VECTOR_DETAILS_TYPE_URL


def has_graph(meta: table_pb2.IndexMetadata) -> bool:
    """Whether ``meta`` may be a graph (IVF_HNSW_*) vector index, or a vector index of a kind
    its details do not tell (empty or unreadable details count as a graph: the safe side).

    pylance 14 cannot map rows *away* from an HNSW graph through the fragment-reuse index: it
    drops them from the graph's vector storage but not from the graph, and every query then
    fails ("HNSW graph has N nodes but its vector storage has M rows"). Binary copies, which
    keep every row, map fine.
    """
    if meta.index_details.type_url != VECTOR_DETAILS_TYPE_URL:
        return False
    fields = wire_fields(meta.index_details.value) if meta.index_details.value else None
    return fields is None or any(number == _VECTOR_DETAILS_HNSW_FIELD for number, _, _ in fields)


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
        raise UnsupportedFeatureError(
            "the fragment-reuse index stores its content in a way this version does not know", path=ds.uri
        )
    if has_unknown_fields(details) or has_unknown_fields(content):
        raise UnsupportedFeatureError("the fragment-reuse index has fields newer than this version knows", path=ds.uri)
    return sorted(content.versions, key=lambda v: v.dataset_version)


def remap_fragment_ids(ids: Iterable[int], versions: Sequence[Details.Version]) -> set[int]:
    """The fragments an index covers once the reuse versions are applied, as a reader sees them.

    A group whose old fragments the index covers in full is covered through its new
    fragments. A group it covers only in part (histories of several writers produce them,
    e.g. pylance's deferred compaction of fragments an ``optimize_indices`` indexed in part)
    counts as pylance counts it: its indexed old fragments are gone and its new fragments are
    not covered -- they also hold rows the index never saw, so they are scanned (exact).
    """
    out = set(ids)
    for version in versions:
        for group in version.groups:
            old = [f.id for f in group.old_fragments]
            hit = sum(1 for i in old if i in out)
            if not hit:
                continue
            out.difference_update(old)
            if hit == len(old):
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


def reuse_versions(ds: Dataset) -> list[Details.Version]:
    """The dataset's fragment-reuse versions, oldest first (none without a reuse index)."""
    meta = reuse_index_meta(ds)
    return load_reuse_versions(ds, meta) if meta is not None else []


def index_views(ds: Dataset, versions: list[Details.Version] | None = None) -> list[IndexView]:
    """Every index segment with its effective fragment coverage (reuse versions applied).

    ``versions`` are the dataset's reuse versions when the caller has read them already (the
    reuse index may live in its own file: one read is enough)."""
    if versions is None:
        versions = reuse_versions(ds)
    out = []
    for meta in ds.indices:
        if not meta.fragment_bitmap:
            out.append(IndexView(meta, None))
            continue
        ids = decode_bitmap(meta.fragment_bitmap, path=ds.uri)
        if is_system_index(meta):
            # A system index's bitmap says what it describes (the reuse index: the new fragments
            # of every version it keeps), not what rows it indexes: it is not mapped.
            out.append(IndexView(meta, frozenset(ids)))
            continue
        out.append(IndexView(meta, frozenset(remap_fragment_ids(ids, versions))))
    return out


@dataclass(frozen=True)
class IndexCoverage:
    """What one named index covers; ``unindexed_rows`` is what pylance's ``index_stats`` reports."""

    name: str
    type: str
    fields: list[int]
    indexed_fragments: int
    unindexed_rows: int


def index_coverage(ds: Dataset, versions: list[Details.Version] | None = None) -> list[IndexCoverage]:
    """Coverage of every user index (segments of one name together), in manifest order;
    ``versions`` as in :func:`index_views`."""
    by_name: dict[str, list[IndexView]] = {}
    for view in index_views(ds, versions):
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


def reuse_version_count(ds: Dataset) -> int:
    return len(reuse_versions(ds))


def total_unindexed_rows(ds: Dataset) -> int:
    return sum(c.unindexed_rows for c in index_coverage(ds))


# --- writing reuse versions --------------------------------------------------------------
def reuse_group(
    old: Sequence[table_pb2.DataFragment],
    new: Sequence[table_pb2.DataFragment],
    kept_rows: Sequence[Sequence[tuple[int, int]]],
) -> Details.Group:
    """The reuse record of one rewrite group.

    ``kept_rows`` lists, per old fragment, the half-open offset ranges whose rows the new
    fragments hold, in order (every physical row for a binary copy, the live rows for a
    re-encode). A reader pairs the sorted old addresses with the new fragments' rows one by
    one, so the two counts must agree; old rows left out map to "deleted".
    """
    ranges = [((f.id << 32) + a, (f.id << 32) + b) for f, spans in zip(old, kept_rows, strict=True) for a, b in spans]
    carried = sum(b - a for a, b in ranges)
    physical = sum(f.physical_rows for f in new)
    if carried != physical:
        raise CompactionRefusedError(
            f"fragments {[f.id for f in old]}: {carried} carried rows but {physical} new physical rows; "
            "the row moves cannot be recorded"
        )
    group = Details.Group(changed_row_addrs=encode_treemap_ranges(ranges))
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
