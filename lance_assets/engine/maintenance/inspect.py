"""A dataset's health at one version: what is there and how fragmented it is.

Everything comes from one manifest read (plus a size lookup only for data
files whose size the manifest does not record), so it is cheap enough for a
Dagster sensor to run on every tick. Page health (``pages=True``, the CLI's default) also
reads every data file's metadata: pages per column and how many are small.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from lance_assets._proto import file_pb2
from lance_assets.engine.dataset import Dataset, DatasetRef, open_dataset
from lance_assets.engine.options import DEFAULT_TARGET_ROWS_PER_FRAGMENT
from lance_assets.engine.page_health import fragments_pages
from lance_assets.errors import CorruptFileError
from lance_assets.format import manifest as mf
from lance_assets.format.pages import MIN_SMALL_PAGES, SMALL_PAGE_BYTES, ColumnPages
from lance_assets.format.repdef import field_paths
from lance_assets.format.roaring import decode_bitmap

# Upper bounds (exclusive) of the byte-size histogram buckets.
_HISTOGRAM_BOUNDS: list[tuple[str, float]] = [
    ("<64KiB", 64 * 2**10),
    ("64KiB-1MiB", 2**20),
    ("1-16MiB", 16 * 2**20),
    ("16-256MiB", 256 * 2**20),
    ("256MiB-1GiB", 2**30),
    (">=1GiB", float("inf")),
]


@dataclass(frozen=True)
class SchemaField:
    id: int
    parent_id: int
    name: str
    logical_type: str
    nullable: bool


@dataclass(frozen=True)
class FragmentInfo:
    id: int
    physical_rows: int
    deleted_rows: int
    files: int
    bytes: int
    file_version: str
    has_deletion_file: bool
    pages: int | None = None  # pages of all its columns (None: page health not read)
    small_pages: int | None = None  # of which small (format.pages.SMALL_PAGE_BYTES)

    @property
    def live_rows(self) -> int:
        return self.physical_rows - self.deleted_rows


@dataclass(frozen=True)
class IndexInfo:
    name: str
    uuid: str
    fields: list[int]
    fragment_ids: list[int] | None  # None when the bitmap could not be decoded


@dataclass(frozen=True)
class Summary:
    fragments: int
    small_fragments: int
    target_rows_per_fragment: int
    rows: int
    deleted_rows: int
    bytes: int
    data_files: int
    histogram: dict[str, int]
    # Page health (None when not read): pages of all columns, small ones, and fragments with
    # at least one column made of many small pages (what `compact` coalesces).
    pages: int | None = None
    small_pages: int | None = None
    small_page_fragments: int | None = None
    small_page_bytes: int = SMALL_PAGE_BYTES


@dataclass(frozen=True)
class ColumnInfo:
    """One column's pages over the whole version (every fragment's file holding it)."""

    field_id: int
    name: str
    files: int
    pages: int
    small_pages: int
    rows: int
    bytes: int

    @property
    def pages_per_file(self) -> float:
        return self.pages / self.files if self.files else 0.0

    @property
    def rows_per_page(self) -> float:
        return self.rows / self.pages if self.pages else 0.0

    @property
    def bytes_per_page(self) -> float:
        return self.bytes / self.pages if self.pages else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            pages_per_file=round(self.pages_per_file, 2),
            rows_per_page=round(self.rows_per_page, 1),
            bytes_per_page=round(self.bytes_per_page, 1),
        )
        return out


@dataclass(frozen=True)
class Inspection:
    uri: str
    version: int
    storage_version: str
    naming_scheme: str
    reader_feature_flags: list[str]
    writer_feature_flags: list[str]
    stable_row_ids: bool
    schema: list[SchemaField]
    fragments: list[FragmentInfo]
    indices: list[IndexInfo]
    config: dict[str, str]
    summary: Summary
    writer: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    columns: list[ColumnInfo] = field(default_factory=list)  # page health per column (empty: not read)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["columns"] = [c.to_dict() for c in self.columns]
        return out


def _schema(fields: list[file_pb2.Field]) -> list[SchemaField]:
    return [SchemaField(f.id, f.parent_id, f.name, f.logical_type, f.nullable) for f in fields]


def _histogram(sizes: list[int]) -> dict[str, int]:
    counts = {label: 0 for label, _ in _HISTOGRAM_BOUNDS}
    for size in sizes:
        for label, bound in _HISTOGRAM_BOUNDS:
            if size < bound:
                counts[label] += 1
                break
    return counts


def _index_infos(ds: Dataset) -> list[IndexInfo]:
    out = []
    for idx in ds.indices:
        try:
            frags: list[int] | None = list(decode_bitmap(idx.fragment_bitmap)) if idx.fragment_bitmap else []
        except CorruptFileError:  # a bad bitmap must not break a health report
            frags = None
        out.append(IndexInfo(idx.name, idx.uuid.uuid.hex(), list(idx.fields), frags))
    return out


def inspect_dataset(
    uri: DatasetRef,
    *,
    version: int | None = None,
    target_rows_per_fragment: int = DEFAULT_TARGET_ROWS_PER_FRAGMENT,
    storage_options: Mapping[str, Any] | None = None,
    pages: bool = False,
    max_concurrent_requests: int | None = None,
) -> Inspection:
    """Inventory and fragmentation summary of one dataset version.

    Everything comes from one manifest read (plus a size lookup only for data files whose size
    the manifest does not record), so a sensor can decide on every tick whether a compaction
    is worth running, and the CLI can show an operator what is there before anything changes.

    Args:
        uri: The dataset: a URI, an open Dataset or a Storage.
        version: The version to inspect; default the latest (or an open Dataset's own).
        target_rows_per_fragment: Fragments with fewer rows count as small in the summary.
        storage_options: Filesystem options (credentials, endpoint) for a URI.
        pages: Also read every data file's metadata for page health: pages per column, rows
            and bytes per page, small pages (``columns``, per-fragment and summary counts).
        max_concurrent_requests: Metadata reads in flight on an object store (for ``pages``);
            default the Storage's (``CompactionOptions``' default).

    Returns:
        The schema, fragments, indices, feature flags and a summary (small fragments, rows,
        bytes, a size histogram) of that version.

    Raises:
        NotADatasetError: ``uri`` holds no Lance dataset.
        VersionNotFoundError: ``version`` does not exist.
        UnknownFeatureFlagError: The manifest sets a reader flag we do not implement.
        LanceAssetsError: Storage or corruption errors while reading (a typed subclass).

    Examples:
        >>> from lance_assets.engine import inspect_dataset
        >>> summary = inspect_dataset("/data/events.lance", target_rows_per_fragment=1_000_000).summary
        >>> summary.fragments, summary.small_fragments, summary.bytes
    """
    ds = open_dataset(uri, storage_options, version)
    if max_concurrent_requests is not None:
        ds.storage.max_in_flight = max_concurrent_requests
    m = ds.manifest
    frags: list[FragmentInfo] = []
    health = _page_health(ds) if pages else None
    names: dict[tuple[int, int], str] = {}  # version pair -> name; a sensor runs this on every tick
    for f in m.fragments:
        files = list(f.files)
        versions = set()
        for df in files:
            pair = (df.file_major_version, df.file_minor_version)
            name = names.get(pair)
            if name is None:
                name = names[pair] = mf.storage_version_name(mf.data_file_version(df))
            versions.add(name)
        has_deletion_file = f.HasField("deletion_file")
        frags.append(
            FragmentInfo(
                id=f.id,
                physical_rows=f.physical_rows,
                deleted_rows=f.deletion_file.num_deleted_rows if has_deletion_file else 0,
                files=len(files),
                bytes=ds.data_bytes(files),
                file_version=",".join(sorted(versions)),
                has_deletion_file=has_deletion_file,
                pages=None if health is None else sum(s.pages for s in health[1].get(f.id, {}).values()),
                small_pages=None if health is None else sum(s.small_pages for s in health[1].get(f.id, {}).values()),
            )
        )
    summary = Summary(
        fragments=len(frags),
        small_fragments=sum(1 for f in frags if f.physical_rows < target_rows_per_fragment),
        target_rows_per_fragment=target_rows_per_fragment,
        rows=sum(f.live_rows for f in frags),
        deleted_rows=sum(f.deleted_rows for f in frags),
        bytes=sum(f.bytes for f in frags),
        data_files=sum(f.files for f in frags),
        histogram=_histogram([f.bytes for f in frags]),
        pages=None if health is None else sum(c.pages for c in health[0]),
        small_pages=None if health is None else sum(c.small_pages for c in health[0]),
        small_page_fragments=None
        if health is None
        else sum(1 for per in health[1].values() if any(s.fragmented for s in per.values())),
    )
    wv = m.writer_version
    return Inspection(
        uri=ds.uri,
        version=ds.version,
        storage_version=mf.storage_version_name(ds.storage_version),
        naming_scheme=ds.location.scheme.value,
        reader_feature_flags=mf.flag_names(m.reader_feature_flags),
        writer_feature_flags=mf.flag_names(m.writer_feature_flags),
        stable_row_ids=ds.stable_row_ids,
        schema=_schema(list(m.fields)),
        fragments=frags,
        indices=_index_infos(ds),
        config=dict(m.config),
        summary=summary,
        writer=f"{wv.library} {wv.version}".strip(),
        columns=[] if health is None else health[0],
    )


def _page_health(ds: Dataset) -> tuple[list[ColumnInfo], dict[int, dict[int, ColumnPages]]]:
    """Per column (schema order) its pages over all fragments, and per fragment its columns' pages."""
    m = ds.manifest
    live = {f.id for f in m.fields}
    per_fragment = dict(zip((f.id for f in m.fragments), fragments_pages(ds, list(m.fragments), live)))
    sums: dict[int, tuple[int, ColumnPages]] = {}
    for per in per_fragment.values():
        for fid, stats in per.items():
            files, total = sums.get(fid, (0, ColumnPages()))
            sums[fid] = (files + 1, total + stats)
    names = field_paths(list(m.fields))
    columns = [
        ColumnInfo(f.id, names[f.id], files, s.pages, s.small_pages, s.rows, s.bytes)
        for f in m.fields
        if f.id in sums
        for files, s in [sums[f.id]]
    ]
    return columns, per_fragment


#: Re-exported for the CLI's explanation of "small".
SMALL_PAGE_RULE = f"pages under {SMALL_PAGE_BYTES // 1024} KiB; a column with {MIN_SMALL_PAGES}+ of them is coalesced by compact"
