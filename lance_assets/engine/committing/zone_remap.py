"""Rewriting a zoned index segment (zone map, bloom filter) onto the rows of a rewrite.

Both kinds keep one row per *zone*: a run of rows of one fragment named by ``fragment_id``,
``zone_start`` (the physical offset of its first row) and ``zone_length`` (the span up to its
last row; rows deleted when the index was built may sit inside or between zones), plus the
zone's summary (min, max and null counts for a zone map; a bloom filter and ``has_null`` for
a bloom filter index). pylance 14 also keeps the addresses of the rows whose value is null, as
a row-address map in a global buffer of the file (its index in the ``null_bitmap`` schema
metadata). A query returns the row *addresses* of every zone that may match and rechecks
them, also on stable-row-id datasets.

Lance's own compaction cannot move such an index: on stable-row-id datasets pylance 14 leaves
it covering none of the merged rows (measured: ``num_unindexed_rows`` = every merged row), and
re-indexing is a second version. A rewrite only relabels rows, though: the rows of a zone land,
in order, in one run of rows of a new fragment (or two runs when the new fragments are cut
inside it), so the zone is written anew with the new fragment, start and span and the same
summary, and the null rows' addresses are mapped like a BTree's. Rows a re-encode dropped
leave the span and the null rows; a zone left with no row goes. The summary
was computed over the zone's rows at build time and those rows are all still in the run, so
it still answers "may match" for every one of them, which is all a recheck-based index needs.

The file is read and written through pylance's Lance file reader and writer (this runs only
where pylance is installed; otherwise coverage of the moved rows is dropped as before, and
re-indexed afterwards). A segment whose file or columns are not the layout above, or whose
zones would not land as one contiguous run, is left to that fallback, never guessed.
"""

from __future__ import annotations

import tempfile
import uuid as uuid_mod
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lance_assets._proto import table_pb2
from lance_assets.engine.committing.btree_remap import (
    GONE,
    IndexFile,
    RowMoves,
    map_addresses,
    read_index_file,
    segment_files,
    segment_folder,
    write_index_file,
)
from lance_assets.engine.dataset import INDICES_DIR, Dataset
from lance_assets.format.roaring import decode_row_addr_map, encode_row_addr_map

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

#: Details type -> (its one file, the summary columns it keeps per zone besides the location).
ZONED_KINDS = {
    "/lance.table.ZoneMapIndexDetails": ("zonemap.lance", ("min", "max", "null_count", "nan_count")),
    "/lance.index.pb.BloomFilterIndexDetails": ("bloomfilter.lance", ("has_null", "bloom_filter_data")),
}
LOCATION = ("fragment_id", "zone_start", "zone_length")
#: Schema metadata naming the global buffer that holds the addresses of the null rows.
NULL_BITMAP_KEY = b"null_bitmap"
#: Rows of zones expanded to addresses at once (8 bytes each, a few arrays): memory stays bounded.
_ROWS_PER_PASS = 1 << 22
#: Index versions pylance 14 writes for these kinds; the file layout is checked anyway.
_KNOWN_VERSIONS = (0,)


def is_zoned(meta: table_pb2.IndexMetadata) -> bool:
    return meta.index_details.type_url in ZONED_KINDS


def remap_zones(
    ds: Dataset, meta: table_pb2.IndexMetadata, moves: Sequence[RowMoves]
) -> tuple[str, list[tuple[str, bytes]]] | str:
    """The new segment's uuid and file (``_indices/<uuid>/<file>``) with every zone of a moved
    fragment relocated through ``moves`` in turn, or why the segment cannot be rewritten (the
    caller then drops its coverage of the moved rows)."""
    import numpy as np

    name, summary = ZONED_KINDS[meta.index_details.type_url]
    if meta.index_version not in _KNOWN_VERSIONS:
        return f"{name} index format version {meta.index_version} is not one we rewrite"
    names = segment_files(ds, meta)
    if names != {name}:
        return f"index files {sorted(names)} are not the one file of a {name} segment we know"
    with tempfile.TemporaryDirectory(prefix="lance-assets-zones-") as tmp:
        file = read_index_file(ds, f"{segment_folder(meta)}/{name}", tmp)
        zones = file.table
        if sorted(zones.column_names) != sorted([*summary, *LOCATION]) or any(
            str(zones.schema.field(c).type) != "uint64" for c in LOCATION
        ):
            return f"the columns {zones.column_names} of {name} are not a layout we know"
        # The only side data we know: the null rows' addresses, in the buffer the metadata names.
        nulls_at = (zones.schema.metadata or {}).get(NULL_BITMAP_KEY)
        if file.buffers != [] and (nulls_at != b"1" or len(file.buffers) != 1):
            return f"{name} keeps side data (global buffers) we do not know"
        frag, start, length = (zones[c].combine_chunks().to_numpy(zero_copy_only=False).astype(np.uint64) for c in LOCATION)
        relocated = _relocate(frag, start, length, moves)
        if isinstance(relocated, str):
            return relocated
        buffers = [_map_row_addr_map(b, moves, path=ds.uri) for b in file.buffers]
        out = IndexFile(_zones_table(zones, *relocated), file.version, buffers)
        new_uuid = str(uuid_mod.uuid4())
        return new_uuid, [(f"{INDICES_DIR}/{new_uuid}/{name}", write_index_file(out, tmp))]


def _map_row_addr_map(data: bytes, moves: Sequence[RowMoves], *, path: str) -> bytes:
    """A row-address map (the null rows) with every address of a moved fragment mapped
    through ``moves`` in turn (dropped rows leave it); other fragments' entries unchanged."""
    import numpy as np

    entries = decode_row_addr_map(data, path=path)
    rows = {k: len(t) for step in reversed(moves) for k, t in step.new_address.items()}  # physical rows
    moved = {f: v for f, v in entries.items() if f in rows}
    out: dict[int, list[int] | None] = {f: v for f, v in entries.items() if f not in rows}
    if moved:
        addresses = np.concatenate(
            [
                (np.uint64(f) << np.uint64(32))
                + (np.arange(rows[f], dtype=np.uint64) if v is None else np.asarray(v, dtype=np.uint64))
                for f, v in moved.items()
            ]
        )
        for step in moves:
            addresses = map_addresses(addresses, step)
        addresses = np.sort(addresses[addresses != np.uint64(GONE)])
        frags = addresses >> np.uint64(32)
        for f in np.unique(frags):  # new fragment ids: never one of the unmoved entries
            out[int(f)] = (addresses[frags == f] & np.uint64(0xFFFFFFFF)).tolist()
    return encode_row_addr_map(out)


def _relocate(
    frag: np.ndarray, start: np.ndarray, length: np.ndarray, moves: Sequence[RowMoves]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | str:
    """Per output zone: the input zone it copies its summary from, its fragment, start and
    span, sorted by fragment and start (the order pylance writes). Zones of fragments no step
    moves are kept as they are; the others are expanded to their rows' addresses, mapped, and
    cut into one zone per new fragment they land in."""
    import numpy as np

    moved_ids = np.array(sorted({k for step in moves for k in step.new_address}), dtype=np.uint64)
    touched = np.isin(frag, moved_ids)
    kept = np.flatnonzero(~touched)
    parts = [(kept, frag[kept], start[kept], length[kept])]
    which = np.flatnonzero(touched)
    # Mapping is monotonic within an old fragment, so a zone whose first and last rows land
    # in one new fragment exactly ``length - 1`` rows apart lost no row and was not cut: it
    # moves whole (every zone of a binary copy not cut by a file cap). Only the others ...
    first_row = (frag[which] << np.uint64(32)) + start[which]
    ends = np.concatenate([first_row, first_row + length[which] - np.uint64(1)])
    for step in moves:
        ends = map_addresses(ends, step)
    lo, hi = ends[: len(which)], ends[len(which) :]
    whole = (length[which] > 0) & (lo != np.uint64(GONE)) & (hi != np.uint64(GONE))
    whole &= ((lo >> np.uint64(32)) == (hi >> np.uint64(32))) & (hi - lo + np.uint64(1) == length[which])
    parts.append((which[whole], lo[whole] >> np.uint64(32), lo[whole] & np.uint64(0xFFFFFFFF), length[which][whole]))
    which = which[~whole]
    # ... are expanded to their rows' addresses and mapped, a bounded number of rows at a time.
    batch = np.cumsum(length[which].astype(np.int64)) // _ROWS_PER_PASS if len(which) else np.zeros(0, np.int64)
    for part in np.unique(batch):
        chosen = which[batch == part]
        lengths = length[chosen].astype(np.int64)
        zone = np.repeat(chosen, lengths)
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)
        offsets = np.arange(len(zone), dtype=np.uint64) - first.astype(np.uint64) + start[zone]
        mapped = (frag[zone] << np.uint64(32)) + offsets
        for step in moves:
            mapped = map_addresses(mapped, step)
        live = mapped != np.uint64(GONE)
        zone, mapped = zone[live], mapped[live]
        if not len(zone):
            continue
        new_frag = mapped >> np.uint64(32)
        new_offset = mapped & np.uint64(0xFFFFFFFF)
        cut = np.flatnonzero((np.diff(zone) != 0) | (np.diff(new_frag) != 0)) + 1
        heads = np.concatenate([[0], cut])
        tails = np.concatenate([cut, [len(zone)]]) - 1
        span = new_offset[tails] - new_offset[heads] + np.uint64(1)
        if (span != (tails - heads + 1).astype(np.uint64)).any():
            return "a zone's rows would not land as one run of a new fragment"
        parts.append((zone[heads], new_frag[heads], new_offset[heads], span))
    source, out_frag, out_start, out_length = (np.concatenate(p) for p in zip(*parts, strict=True))
    order = np.lexsort((out_start, out_frag))
    return source[order], out_frag[order], out_start[order], out_length[order]


def _zones_table(zones: pa.Table, source: np.ndarray, frag: np.ndarray, start: np.ndarray, length: np.ndarray) -> pa.Table:
    """``zones`` with each output zone's summary taken from its source zone and its location
    set; columns, types and schema metadata as they were."""
    import pyarrow as pa

    out = zones.take(pa.array(source, pa.int64()))
    for column, values in zip(LOCATION, (frag, start, length), strict=True):
        i = out.schema.get_field_index(column)
        out = out.set_column(i, out.schema.field(column), pa.array(values, pa.uint64()))
    return out.replace_schema_metadata(zones.schema.metadata)
