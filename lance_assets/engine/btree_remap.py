"""Rewriting a BTree index segment onto the row addresses of a rewrite (stable-row-id datasets).

pylance 14 keeps stable row ids out of its BTree: the segment's ``page_data.lance`` pairs each
value (sorted) with a row *address*, and ``page_lookup.lance`` holds per page of
``batch_size`` rows its first value (``min``), last value (``max``), null count and index.
A fragment-reuse index could map those addresses, but pylance refuses one on stable-row-id
datasets, and moving the segment's bitmap to the new fragments without mapping the addresses
makes pylance answer from stale addresses (nothing found). So, as Lance's own compaction does
there, the segment is written anew under a new uuid with every address mapped; the values and
their order do not change, only entries of dropped rows go. The other index kinds of such a
dataset key their entries by row id and keep their files (``commit``).

Both files are Lance files, read and written through pylance (this runs only where pylance is
installed; without it the commit drops the segment's coverage instead). Every segment is
checked first: our recomputation of its lookup from its own data must give the lookup it has,
otherwise the segment is left alone (coverage dropped, never guessed).
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


def is_btree(meta: table_pb2.IndexMetadata) -> bool:
    return meta.index_details.type_url == BTREE_DETAILS_TYPE_URL


def remap_btree(ds: Dataset, meta: table_pb2.IndexMetadata, moves: RowMoves) -> tuple[str, list[tuple[str, bytes]]] | str:
    """The new segment's uuid and files (``_indices/<uuid>/...``) with every address of a moved
    row mapped, or why the segment cannot be rewritten (the caller then drops its coverage)."""
    import numpy as np
    import pyarrow as pa
    from lance.file import LanceFileReader, LanceFileWriter

    if meta.index_version not in _KNOWN_VERSIONS:
        return f"BTree index format version {meta.index_version} is not one we rewrite"
    folder = f"{INDICES_DIR}/{uuid_mod.UUID(bytes=bytes(meta.uuid.uuid))}"
    names = {f.path for f in meta.files} if len(meta.files) else {e.name for e in ds.storage.list(folder)}
    if names != {PAGE_DATA, PAGE_LOOKUP}:
        return f"index files {sorted(names)} are not the two files of a BTree segment we know"
    with tempfile.TemporaryDirectory(prefix="lance-assets-btree-") as tmp:
        local = {}
        for name in (PAGE_DATA, PAGE_LOOKUP):
            local[name] = os.path.join(tmp, "in-" + name)
            with open(local[name], "wb") as fh:
                fh.write(ds.storage.read(f"{folder}/{name}"))
        readers = {name: LanceFileReader(path) for name, path in local.items()}
        data = readers[PAGE_DATA].read_all().to_table()
        lookup = readers[PAGE_LOOKUP].read_all().to_table()
        metadata = lookup.schema.metadata or {}
        if metadata.get(b"range_partitioned", b"false") != b"false" or b"batch_size" not in metadata:
            return "a range-partitioned (or unrecognised) BTree layout"
        batch = int(metadata[b"batch_size"])
        if data.column_names != ["values", "ids"] or not _lookup_of(data, batch, lookup.schema).equals(lookup):
            return "the BTree segment's lookup is not what its pages give"
        ids = data["ids"].combine_chunks().to_numpy(zero_copy_only=False).astype(np.uint64)
        mapped = _map_addresses(ids, moves)
        keep = mapped != np.uint64(GONE)
        out = data.set_column(1, data.schema.field("ids"), pa.array(mapped, pa.uint64()))
        if not keep.all():
            out = out.filter(pa.array(keep))
        new_lookup = lookup if keep.all() else _lookup_of(out, batch, lookup.schema)
        version = {name: _file_version(r.metadata()) for name, r in readers.items()}
        new_uuid = str(uuid_mod.uuid4())
        writes = []
        for name, table in ((PAGE_DATA, out), (PAGE_LOOKUP, new_lookup)):
            path = os.path.join(tmp, "out-" + name)
            writer = LanceFileWriter(path, table.schema, version=version[name])
            if table.num_rows:
                writer.write_batch(table)
            writer.close()
            with open(path, "rb") as fh:
                writes.append((f"{INDICES_DIR}/{new_uuid}/{name}", fh.read()))
    return new_uuid, writes


def _file_version(meta: object) -> str:
    """``major.minor`` of a Lance file, from pylance's file metadata (not in its type stubs)."""
    return f"{meta.major_version}.{meta.minor_version}"  # type: ignore[attr-defined]


def _map_addresses(ids: np.ndarray, moves: RowMoves) -> np.ndarray:
    import numpy as np

    out = ids.copy()
    frags = (ids >> np.uint64(32)).astype(np.int64)
    offsets = (ids & np.uint64(0xFFFFFFFF)).astype(np.int64)
    for frag_id, table in moves.new_address.items():
        hit = frags == frag_id
        if hit.any():
            out[hit] = table[offsets[hit]]
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
