"""Rewriting a BTree index segment onto the row addresses of a rewrite.

pylance 14's BTree keys its entries by row *address*, also on stable-row-id datasets: the
segment's ``page_data.lance`` pairs each value (sorted, nulls first) with a row address, and
``page_lookup.lance`` holds per page of ``batch_size`` rows its first value (``min``), last
value (``max``), null count and index. A rewrite moves rows, so the entries must be mapped:

- on stable-row-id datasets pylance refuses a fragment-reuse index, and moving the segment's
  bitmap without mapping its addresses makes pylance find nothing in the merged rows;
- without stable row ids the reuse index would map them for readers, but pylance's own later
  remapping compaction maps a BTree's entries without the reuse versions and loses the rows
  they moved.

So, as Lance's own remapping compaction does, the segment is written anew under a new uuid with
every address mapped (through the older reuse versions first, then this rewrite); the values
and their order do not change, only entries of dropped rows go, and the pages and lookup are
cut anew when any did.

Both files are Lance files, read and written through pylance (this runs only where pylance is
installed; otherwise the segment keeps covering through the reuse index, or drops coverage on
stable-row-id datasets). Every segment is checked first: our recomputation of its lookup from
its own pages must give the lookup it has, otherwise it is left to the fallback, never guessed.
"""

from __future__ import annotations

import os
import tempfile
import uuid as uuid_mod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lance_assets._proto import table_pb2
from lance_assets.engine.dataset import INDICES_DIR, Dataset
from lance_assets.engine.indices import Details
from lance_assets.errors import CorruptFileError
from lance_assets.format.roaring import decode_treemap

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

BTREE_DETAILS_TYPE_URL = "/lance.table.BTreeIndexDetails"
PAGE_DATA = "page_data.lance"
PAGE_LOOKUP = "page_lookup.lance"
#: BTree index versions pylance 14 writes (0 by older builds, 1 by its own); the layout is
#: checked anyway before a segment is rewritten.
_KNOWN_VERSIONS = (0, 1)
#: A moved row that a re-encode dropped: its index entries go.
GONE = 2**64 - 1


@dataclass(frozen=True)
class RowMoves:
    """Per old fragment id, the new address of each of its rows (``GONE`` for dropped rows)."""

    new_address: Mapping[int, np.ndarray]


Group = tuple[Sequence[table_pb2.DataFragment], Sequence[Sequence[tuple[int, int]]], Sequence[table_pb2.DataFragment]]


def row_moves(groups: Iterable[Group]) -> RowMoves:
    """The moves of each ``(old fragments, kept offset ranges per old fragment, new fragments)``
    group: the kept rows, in order, fill the new fragments' rows in order."""
    import numpy as np

    out: dict[int, np.ndarray] = {}
    for old, kept, new in groups:
        targets = np.concatenate(
            [(np.uint64(f.id) << np.uint64(32)) + np.arange(f.physical_rows, dtype=np.uint64) for f in new]
            or [np.zeros(0, np.uint64)]
        )
        used = 0
        for frag, spans in zip(old, kept, strict=True):
            table = np.full(frag.physical_rows, GONE, dtype=np.uint64)
            for start, end in spans:
                table[start:end] = targets[used : used + end - start]
                used += end - start
            out[frag.id] = table
    return RowMoves(out)


def reuse_moves(version: Details.Version) -> RowMoves:
    """The moves one fragment-reuse version records: per group, the old addresses it kept
    (sorted, as readers pair them) fill the new fragments' rows in order; the rest are gone."""
    import numpy as np

    out: dict[int, np.ndarray] = {}
    for group in version.groups:
        kept = np.asarray(decode_treemap(group.changed_row_addrs), dtype=np.uint64)
        targets = np.concatenate(
            [(np.uint64(f.id) << np.uint64(32)) + np.arange(f.physical_rows, dtype=np.uint64) for f in group.new_fragments]
            or [np.zeros(0, np.uint64)]
        )
        if len(kept) != len(targets):
            raise CorruptFileError(
                f"a fragment-reuse group keeps {len(kept)} rows but its new fragments hold {len(targets)}", path=None
            )
        frags = (kept >> np.uint64(32)).astype(np.int64)
        offsets = (kept & np.uint64(0xFFFFFFFF)).astype(np.int64)
        for f in group.old_fragments:
            table = np.full(f.physical_rows, GONE, dtype=np.uint64)
            hit = frags == f.id
            table[offsets[hit]] = targets[hit]
            out[f.id] = table
    return RowMoves(out)


def remap_btree(
    ds: Dataset, meta: table_pb2.IndexMetadata, moves: Sequence[RowMoves]
) -> tuple[str, list[tuple[str, bytes]]] | str:
    """The new segment's uuid and files (``_indices/<uuid>/...``) with every address mapped
    through ``moves`` in turn, or why the segment cannot be rewritten (the caller then keeps
    it as it is, covering through the reuse index, or drops its coverage)."""
    import numpy as np
    import pyarrow as pa

    if meta.index_version not in _KNOWN_VERSIONS:
        return f"BTree index format version {meta.index_version} is not one we rewrite"
    folder = segment_folder(meta)
    names = segment_files(ds, meta)
    if names != {PAGE_DATA, PAGE_LOOKUP}:
        return f"index files {sorted(names)} are not the two files of a BTree segment we know"
    with tempfile.TemporaryDirectory(prefix="lance-assets-btree-") as tmp:
        data_file, lookup_file = (read_index_file(ds, f"{folder}/{name}", tmp) for name in (PAGE_DATA, PAGE_LOOKUP))
        if data_file.buffers or lookup_file.buffers:
            return "the BTree segment keeps side data (global buffers) we do not know"
        data, lookup = data_file.table, lookup_file.table
        metadata = lookup.schema.metadata or {}
        if metadata.get(b"range_partitioned", b"false") != b"false" or b"batch_size" not in metadata:
            return "a range-partitioned (or unrecognised) BTree layout"
        batch = int(metadata[b"batch_size"])
        if data.column_names != ["values", "ids"] or not _lookup_of(data, batch, lookup.schema).equals(lookup):
            return "the BTree segment's lookup is not what its pages give"
        ids = data["ids"].combine_chunks().to_numpy(zero_copy_only=False).astype(np.uint64)
        mapped = ids
        for step in moves:
            mapped = map_addresses(mapped, step)
        keep = mapped != np.uint64(GONE)
        out = data.set_column(1, data.schema.field("ids"), pa.array(mapped, pa.uint64()))
        if not keep.all():
            out = out.filter(pa.array(keep))
        new_lookup = lookup if keep.all() else _lookup_of(out, batch, lookup.schema)
        new_uuid = str(uuid_mod.uuid4())
        writes = [
            (f"{INDICES_DIR}/{new_uuid}/{name}", write_index_file(IndexFile(table, file.version, []), tmp))
            for name, table, file in ((PAGE_DATA, out, data_file), (PAGE_LOOKUP, new_lookup, lookup_file))
        ]
    return new_uuid, writes


def segment_folder(meta: table_pb2.IndexMetadata) -> str:
    """``_indices/<uuid>``: where a segment's files live."""
    return f"{INDICES_DIR}/{uuid_mod.UUID(bytes=bytes(meta.uuid.uuid))}"


def segment_files(ds: Dataset, meta: table_pb2.IndexMetadata) -> set[str]:
    """The names of a segment's files: as its metadata lists them, else as stored."""
    return {f.path for f in meta.files} if len(meta.files) else {e.name for e in ds.storage.list(segment_folder(meta))}


@dataclass(frozen=True)
class IndexFile:
    """One Lance file of an index segment: its rows, its ``major.minor`` version (to write it
    back in), and its global buffers after the first (the first holds the schema; index
    kinds keep side data in the others, named by index from the schema metadata)."""

    table: pa.Table
    version: str
    buffers: list[bytes]


def read_index_file(ds: Dataset, rel: str, tmp: str) -> IndexFile:
    """One Lance file of an index segment, read whole through pylance's file reader (via a
    local copy in ``tmp``)."""
    from lance.file import LanceFileReader

    local = os.path.join(tmp, f"in-{uuid_mod.uuid4()}")
    with open(local, "wb") as fh:
        fh.write(ds.storage.read(rel))
    reader = LanceFileReader(local)
    meta = reader.metadata()
    count = len(meta.global_buffers)
    return IndexFile(reader.read_all().to_table(), _file_version(meta), [reader.read_global_buffer(i) for i in range(1, count)])


def write_index_file(file: IndexFile, tmp: str) -> bytes:
    """``file`` as the bytes of a Lance file (schema metadata and global buffers in their
    places), written through pylance's file writer in ``tmp``."""
    from lance.file import LanceFileWriter

    path = os.path.join(tmp, f"out-{uuid_mod.uuid4()}")
    writer = LanceFileWriter(path, file.table.schema, version=file.version)
    for i, buffer in enumerate(file.buffers, start=1):
        if writer.add_global_buffer(buffer) != i:
            raise RuntimeError("pylance numbered a global buffer unlike the file it rewrites")
    if file.table.num_rows:
        writer.write_batch(file.table)
    writer.close()
    with open(path, "rb") as fh:
        return fh.read()


def _file_version(meta: object) -> str:
    """``major.minor`` of a Lance file, from pylance's file metadata (not in its type stubs)."""
    return f"{meta.major_version}.{meta.minor_version}"  # type: ignore[attr-defined]


def map_addresses(ids: np.ndarray, moves: RowMoves) -> np.ndarray:
    """``ids`` with every address of a moved fragment replaced by its new address (``GONE``
    for dropped rows and for offsets past the fragment's end); other addresses unchanged.
    One pass over the entries whatever the number of fragments moved."""
    import numpy as np

    if not moves.new_address:
        return ids
    keys = np.array(sorted(moves.new_address), dtype=np.int64)
    tables = [moves.new_address[int(k)] for k in keys]
    lengths = np.array([len(t) for t in tables], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    flat = np.concatenate(tables) if tables else np.zeros(0, np.uint64)
    live = ids != np.uint64(GONE)
    frags = (ids >> np.uint64(32)).astype(np.int64)
    offsets = (ids & np.uint64(0xFFFFFFFF)).astype(np.int64)
    pos = np.clip(np.searchsorted(keys, frags), 0, len(keys) - 1)
    moved = live & (keys[pos] == frags)
    inside = moved & (offsets < lengths[pos])
    out = ids.copy()
    out[inside] = flat[starts[pos[inside]] + offsets[inside]]
    out[moved & ~inside] = np.uint64(GONE)  # names no row of that fragment: nothing to find
    return out


def _lookup_of(data: pa.Table, batch: int, schema: pa.Schema) -> pa.Table:
    """The lookup of ``data`` paged by ``batch`` rows: first and last value, nulls, page index."""
    import pyarrow as pa

    values = data["values"].combine_chunks()
    mins, maxs, nulls = [], [], []
    for start in range(0, len(values), batch):
        page = values.slice(start, batch)
        mins.append(page[0])
        maxs.append(page[len(page) - 1])
        nulls.append(page.null_count)
    pages = len(mins)
    return pa.table(
        [
            pa.array([m.as_py() for m in mins], schema.field("min").type),
            pa.array([m.as_py() for m in maxs], schema.field("max").type),
            pa.array(nulls, schema.field("null_count").type),
            pa.array(range(pages), schema.field("page_idx").type),
        ],
        schema=schema,
    )
