"""One output file of a legacy (0.x) dataset, merged by binary copy.

A legacy file is a list of batches, each with one page per field, addressed through a page
table indexed by (field id, batch). Lance's legacy readers place batch *i* at row *i* × (rows of
batch 0) (docs/format.md), so every batch of a file but the last must have the same size. Two
ways to merge files:

* **concatenation**, when the inputs' batches already satisfy that rule one after the other
  (every input but the last holds whole batches of one size): the pages of every live field are
  copied byte for byte, file after file, in the order they lie in their source (adjacent pages
  coalesce into one copy of at most ``read_batch_bytes`` per read, so an input without dropped
  columns is copied as one extent per var-binary page). VAR_BINARY pages are the one encoding
  holding file positions: the page-table entry points at ``n + 1`` absolute i64 offsets of the
  value boundaries, written right after the values; each such array is read (in chunks of at
  most ``read_batch_bytes``), shifted by how far its page moved, and written in place of the
  original, so the output has the same layout as if the source bytes had been copied verbatim;
* **re-paging** otherwise: the concatenated rows are cut into batches of one size and every
  page is assembled from slices of the input pages (engine/copying/legacy_repage.py), still without
  decoding a value.

Either way the tail is rebuilt (:func:`legacy.build_legacy_tail`): a page table for every output
batch, the cumulative batch offsets, the embedded schema; page statistics are dropped.

What is refused (CompactionRefusedError, so the task is skipped with a reason):

* DICTIONARY fields whose inputs store different dictionary values (their keys would mean
  different things; pylance never writes such files). Otherwise a dictionary field's key pages
  are copied like integer pages and its dictionary is written once, after the pages
  (:func:`_dictionaries`); readers take it from the manifest file anyway (docs/format.md);
* types :func:`legacy.field_layouts` cannot classify;
* more than 2**31 - 1 rows (legacy batch offsets are int32), an output batch whose list items
  would overflow int32 list offsets, files whose page table range disagrees with their DataFile.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from lance_assets._proto import file_pb2, table_pb2
from lance_assets.engine.copying.legacy_io import LegacyCopier, LegacyInput
from lance_assets.engine.copying.legacy_repage import Repager, repage_batch_size
from lance_assets.engine.dataset import DATA_DIR, Dataset
from lance_assets.engine.report import ProgressCallback
from lance_assets.engine.rows import carry_row_sequences
from lance_assets.engine.tail import read_legacy_metadata, read_legacy_tail
from lance_assets.errors import CompactionRefusedError, CorruptFileError, UnsupportedFeatureError
from lance_assets.format import legacy
from lance_assets.format import manifest as mf
from lance_assets.io import Storage


def _inputs(ds: Dataset, frag: table_pb2.DataFragment, schema: dict[int, file_pb2.Field]) -> list[LegacyInput]:
    out = []
    for df in frag.files:
        rel = ds.data_file_path(df)
        where = ds.storage.url(rel)
        if mf.data_file_version(df) != mf.LEGACY:
            raise CompactionRefusedError("data file is not a legacy (0.x) file in a legacy dataset", path=where)
        meta, tail, tail_offset = read_legacy_tail(ds.storage, rel, df.file_size_bytes)
        if meta.num_rows != frag.physical_rows:
            raise CompactionRefusedError(
                f"file holds {meta.num_rows} rows but fragment {frag.id} has {frag.physical_rows}", path=where
            )
        # Lance sizes the page table from the DataFile (first id .. max id), not from the file.
        if not len(df.fields) or (df.fields[0], max(df.fields)) != (meta.min_field_id, meta.max_field_id):
            raise CompactionRefusedError(
                f"DataFile field ids {list(df.fields)[:16]} disagree with the file's page table ids "
                f"{meta.min_field_id}..{meta.max_field_id}",
                path=where,
            )
        try:
            layouts = {lay.field_id: lay for lay in legacy.field_layouts(meta, path=where)}
        except UnsupportedFeatureError as exc:
            raise CompactionRefusedError(exc.reason, path=where) from None
        live = tuple(fid for fid in df.fields if fid in schema)
        for fid in live:
            lay = layouts.get(fid)
            if lay is None:
                raise CompactionRefusedError(f"field {fid} is listed in the DataFile but not stored in the file", path=where)
            if lay.logical_type != schema[fid].logical_type:
                raise CompactionRefusedError(
                    f"field {schema[fid].name!r} is {lay.logical_type!r} in the file but "
                    f"{schema[fid].logical_type!r} in the dataset",
                    path=where,
                )
        out.append(LegacyInput(rel, meta, layouts, live, tail, tail_offset))
    return out


@dataclass(frozen=True)
class _Dictionary:
    """One dictionary field's values as an input file stores them, position-independent:
    the value bytes and, for var-binary values, the value boundaries relative to their start
    (i64 little-endian, one more than there are values); ``positions`` is empty for fixed-width
    values, which ``values`` holds bit-packed or back to back."""

    values: bytes
    positions: bytes
    length: int


def _read_dictionary(storage: Storage, src: LegacyInput, layout: legacy.FieldLayout) -> _Dictionary:
    where = storage.url(src.rel_path)
    d = layout.dictionary
    assert d is not None
    extent = legacy.dictionary_extent(layout.logical_type, d.offset, d.length)
    assert extent is not None  # field_layouts classified it
    if d.values_encoding is not legacy.LegacyEncoding.VAR_BINARY:
        return _Dictionary(storage.read_exact(src.rel_path, d.offset, extent[2]), b"", d.length)
    raw = storage.read_exact(src.rel_path, d.offset, extent[2])
    start = int.from_bytes(raw[:8], "little", signed=True)
    if not 0 <= start <= d.offset:
        raise CorruptFileError(f"dictionary of field {layout.name!r}: values start at {start}, after {d.offset}", path=where)
    positions = legacy.shift_positions(raw, -start, lo=start, hi=d.offset, path=where)
    return _Dictionary(storage.read_exact(src.rel_path, start, d.offset), positions, d.length)


def _dictionaries(
    storage: Storage, sources: Sequence[Sequence[LegacyInput]], schema: dict[int, file_pb2.Field]
) -> dict[int, _Dictionary]:
    """The dictionary of every live dictionary field, refusing inputs whose dictionaries differ.

    The pages of a dictionary field hold integer keys into the dictionary, which pylance reads
    from the dataset's manifest (it refuses appends whose dictionary differs from the
    schema's), so the key pages are copied like any integer page and the output needs one
    dictionary only. It is stored in the output too, so the file is whole on its own; inputs
    with dictionaries of different values would mean keys of different meaning and are refused.
    """
    found: dict[int, _Dictionary] = {}
    for files in sources:
        for src in files:
            for fid in src.field_ids:
                layout = src.layouts[fid]
                if layout.encoding is not legacy.LegacyEncoding.DICTIONARY:
                    continue
                d = _read_dictionary(storage, src, layout)
                if found.setdefault(fid, d) != d:
                    raise CompactionRefusedError(
                        f"dictionary field {schema[fid].name!r}: the inputs hold different dictionaries, so their "
                        "keys cannot share one without re-encoding",
                        path=storage.url(src.rel_path),
                    )
    return found


def _write_dictionaries(
    copier: LegacyCopier, found: dict[int, _Dictionary], fields: list[file_pb2.Field]
) -> list[file_pb2.Field]:
    """Write each dictionary after the pages; ``fields`` with their dictionaries pointing at them."""
    out = []
    for f in fields:
        d = found.get(f.id)
        if d is not None:
            f = file_pb2.Field.FromString(f.SerializeToString())
            start = copier.pos
            copier.write(d.values)
            f.dictionary.offset = copier.pos
            f.dictionary.length = d.length
            if d.positions:
                copier.write(legacy.shift_positions(d.positions, start, lo=0, hi=len(d.values)))
        out.append(f)
    return out


def _concatenable(sources: Sequence[Sequence[LegacyInput]]) -> bool:
    """Whether the inputs' batches, one after the other, already form a file Lance reads right:
    the files of each fragment cut alike, and every batch but the last of the first one's size."""
    same_cut = all(src.meta.batch_offsets == files[0].meta.batch_offsets for files in sources for src in files)
    return same_cut and legacy.uniform_batches([n for files in sources for n in files[0].meta.batch_rows])


def _copy_pages(copier: LegacyCopier, src: LegacyInput, where: str) -> dict[tuple[int, int], legacy.LegacyPage]:
    """Copy the live pages of one input; returns their new entries keyed by (field id, batch)."""
    meta = src.meta
    todo = []
    for fid in src.field_ids:
        layout = src.layouts[fid]
        if layout.encoding is legacy.LegacyEncoding.STRUCT:
            continue
        for batch in range(meta.num_batches):
            page = meta.page(fid, batch)
            start, end = legacy.page_extent(layout, page)
            todo.append((start, end, fid, batch, page, layout))
    todo.sort(key=lambda t: (t[0], t[1]))  # write order: pages never overlap in a valid file

    moved: dict[tuple[int, int], legacy.LegacyPage] = {}
    cursor = 0  # end of the last source extent taken
    chunk = max(8, copier.batch // 8 * 8)
    for start, end, fid, batch, page, layout in todo:
        if layout.encoding is legacy.LegacyEncoding.VAR_BINARY:
            # [values][n + 1 absolute offsets]; the first offset is where the values start.
            first = copier.read(src, start, min(end, start + chunk))
            values_start = int.from_bytes(first[:8], "little", signed=True)
            if not cursor <= values_start <= start:
                raise CorruptFileError(
                    f"field {layout.name!r} batch {batch}: values start at {values_start}, outside {cursor}..{start}", path=where
                )
            dest = copier.add(src, values_start, start)
            delta = dest - values_start
            new_position = copier.pos
            copier.write(legacy.shift_positions(first, delta, lo=values_start, hi=start, path=where))
            pos = start + len(first)
            while pos < end:
                piece = copier.read(src, pos, min(end, pos + chunk))
                copier.write(legacy.shift_positions(piece, delta, lo=values_start, hi=start, path=where))
                pos += len(piece)
            if copier.progress:
                copier.progress(end - start)
        elif end == start:
            new_position = copier.pos  # an empty page (no bytes, e.g. a batch without list items)
        else:
            if start < cursor:
                raise CorruptFileError(
                    f"field {layout.name!r} batch {batch}: page at {start} overlaps the previous page", path=where
                )
            new_position = copier.add(src, start, end)
        cursor = max(cursor, end)
        moved[(fid, batch)] = legacy.LegacyPage(new_position, page.length)
    copier.flush()
    return moved


def _self_check(storage: Storage, rel: str, size: int, offsets: list[int], pages: list[legacy.LegacyPage]) -> None:
    """Read the written file's tail back: the page table and batch offsets must be the ones written,
    the batches cut as Lance's readers need, and every page inside the data region holding one
    value per row (legacy pages have no rep/def layers to judge). Refuses (and deletes) otherwise."""
    where = storage.url(rel)
    back = read_legacy_metadata(storage, rel, size)
    problem = None
    if back.file_size != size or back.batch_offsets != tuple(offsets) or list(back.pages) != pages:
        problem = "the written file's page table or batch offsets read back differently"
    elif not legacy.uniform_batches(back.batch_rows):
        problem = f"the written batches {list(back.batch_rows[:8])} are not all of the first one's size but the last"
    else:
        try:
            legacy.field_layouts(back, path=where)
        except (CorruptFileError, UnsupportedFeatureError) as exc:
            problem = f"the written file does not parse back: {exc}"
    if problem is not None:
        storage.delete(rel, missing_ok=True)
        raise CompactionRefusedError(f"self-check: {problem}", path=where)


def write_legacy_output(
    ds: Dataset,
    inputs: Sequence[table_pb2.DataFragment],
    read_batch_bytes: int,
    progress: ProgressCallback | None,
    verify: bool = True,
) -> tuple[table_pb2.DataFragment, tuple[str, ...], int, int]:
    """Write one merged legacy data file; returns its fragment (id unset), the files written (just
    the data file), bytes read and written.

    The inputs' batches are concatenated when they already line up, re-cut otherwise (see the
    module docstring). With ``verify`` the written file's tail is read back (:func:`_self_check`).
    """
    storage = ds.storage
    schema = {f.id: f for f in ds.manifest.fields}
    sources = [_inputs(ds, frag, schema) for frag in inputs]

    field_sets = set()
    for frag, files in zip(inputs, sources):
        ids = [fid for src in files for fid in src.field_ids]
        if len(set(ids)) != len(ids):
            raise CompactionRefusedError(f"fragment {frag.id} stores a field in two data files", path=ds.uri)
        field_sets.add(frozenset(ids))
    if len(field_sets) != 1:
        raise CompactionRefusedError("the inputs store different sets of fields", path=ds.uri)
    out_ids = sorted(next(iter(field_sets)))
    if not out_ids:
        raise CompactionRefusedError("the inputs store no live field", path=ds.uri)

    rows = sum(files[0].meta.num_rows for files in sources)
    if rows > legacy.MAX_ROWS:
        raise CompactionRefusedError(
            f"{rows} rows exceed the legacy format's limit of {legacy.MAX_ROWS} rows per file", path=ds.uri
        )
    keep = set(out_ids)
    fields = [f for f in ds.manifest.fields if f.id in keep]
    concatenate = _concatenable(sources)
    found = _dictionaries(storage, sources, schema)

    name = mf.data_file_name(uuid.uuid4().bytes)
    rel = f"{DATA_DIR}/{name}"
    lo, hi = out_ids[0], out_ids[-1]
    with storage.open_write(rel) as out:
        copier = LegacyCopier(storage, out, read_batch_bytes, progress)
        if concatenate:
            batch_rows = [n for files in sources for n in files[0].meta.batch_rows]
            total = len(batch_rows)
            pages = [legacy.LegacyPage(0, 0)] * ((hi - lo + 1) * total)
            first_batch = 0
            for files in sources:
                for src in files:
                    for (fid, batch), page in _copy_pages(copier, src, storage.url(src.rel_path)).items():
                        pages[(fid - lo) * total + first_batch + batch] = page
                first_batch += files[0].meta.num_batches
        else:
            holders = [{fid: src for src in files for fid in src.field_ids} for files in sources]
            size_b = repage_batch_size([src.meta.batch_rows for files in sources for src in files])
            repager = Repager(copier, fields, holders, [files[0].meta.num_rows for files in sources], size_b)
            batch_rows = repager.write()
            pages = repager.pages
        fields = _write_dictionaries(copier, found, fields)
        copier.flush()
        data_end = copier.pos
        offsets = [0]
        for n in batch_rows:
            offsets.append(offsets[-1] + n)
        first = sources[0][0].meta
        tail = legacy.build_legacy_tail(
            data_end=data_end,
            min_field_id=lo,
            max_field_id=hi,
            pages=pages,
            batch_offsets=offsets,
            fields=fields,
            schema_metadata=first.schema_metadata,
            embedded_manifest=first.embedded_manifest,
        )
        out.write(tail)
        size = data_end + len(tail)
    if verify:
        _self_check(storage, rel, size, offsets, pages)

    data_file = table_pb2.DataFile(path=name, fields=out_ids, file_major_version=0, file_minor_version=2, file_size_bytes=size)
    fragment = table_pb2.DataFragment(physical_rows=rows)
    fragment.files.append(data_file)
    if ds.stable_row_ids:
        carry_row_sequences(ds, inputs, [fragment])
    return fragment, (rel,), copier.bytes_read, size
