"""What a new fragment carries over from the fragments it replaces: row ids, row versions and
deleted rows.

Binary copy keeps every physical row, so a merged fragment takes its inputs' sequences whole
and one deletion file with their deleted offsets shifted; a re-encode keeps only the live rows,
so the deleted positions are dropped from the sequences instead. Either way row ids are never
renumbered (indices and users hold them) and each row keeps the versions it had.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence

from lance_assets._proto import table_pb2
from lance_assets.engine.dataset import Dataset
from lance_assets.errors import CorruptFileError
from lance_assets.format.deletion import DeletionFileType, decode_deletion_file, encode_deletion_file
from lance_assets.format.rowids import (
    RowIdSequence,
    RowVersionSequence,
    decode_row_ids,
    decode_row_versions,
    encode_row_ids,
    encode_row_versions,
)


def live_rows(fragments: Iterable[table_pb2.DataFragment]) -> int:
    """Rows the fragments hold that are not deleted."""
    return sum(f.physical_rows - (f.deletion_file.num_deleted_rows if f.HasField("deletion_file") else 0) for f in fragments)


def deleted_offsets(ds: Dataset, fragment: table_pb2.DataFragment) -> list[int]:
    """The fragment's deleted row offsets (sorted), checked against the manifest's count."""
    if not fragment.HasField("deletion_file"):
        return []
    rel = ds.deletion_file_path(fragment)
    where = ds.storage.url(rel)
    kind = DeletionFileType(fragment.deletion_file.file_type)
    local = decode_deletion_file(ds.storage.read(rel), kind, physical_rows=fragment.physical_rows, path=where)
    expected = fragment.deletion_file.num_deleted_rows
    if expected and len(local) != expected:
        raise CorruptFileError(f"deletion file holds {len(local)} rows, the manifest says {expected}", path=where)
    return sorted(local)


def carry_row_sequences(
    ds: Dataset,
    inputs: Sequence[table_pb2.DataFragment],
    outputs: Sequence[table_pb2.DataFragment],
    *,
    live_only: bool = False,
) -> None:
    """Give ``outputs`` (whose ``physical_rows`` are set) their inputs' row ids and versions.

    The inputs' sequences are concatenated in input order -- without the deleted rows when
    ``live_only`` (a re-encode) -- and cut to the outputs' sizes. A fragment without version
    sequences counts as created (and last updated) at version 1.
    """
    where = ds.uri
    deleted = [deleted_offsets(ds, f) if live_only else [] for f in inputs]
    ids = RowIdSequence.concat(decode_row_ids(f.inline_row_ids, path=where).without_offsets(d) for f, d in zip(inputs, deleted))
    sizes = [o.physical_rows for o in outputs]
    for out, part in zip(outputs, ids.split(sizes)):
        out.inline_row_ids = encode_row_ids(part)
    if not any(f.HasField("inline_created_at_versions") or f.HasField("inline_last_updated_at_versions") for f in inputs):
        return
    created, updated = [], []
    for f, d in zip(inputs, deleted):
        c = (
            decode_row_versions(f.inline_created_at_versions, path=where)
            if f.HasField("inline_created_at_versions")
            else RowVersionSequence.uniform(f.physical_rows, 1)
        )
        u = (
            decode_row_versions(f.inline_last_updated_at_versions, path=where)
            if f.HasField("inline_last_updated_at_versions")
            else c
        )
        created.append(c.without_offsets(d))
        updated.append(u.without_offsets(d))
    for out, c, u in zip(
        outputs, RowVersionSequence.concat(created).split(sizes), RowVersionSequence.concat(updated).split(sizes)
    ):
        out.inline_created_at_versions = encode_row_versions(c)
        out.inline_last_updated_at_versions = encode_row_versions(u)


def carry_deletions(ds: Dataset, inputs: Sequence[table_pb2.DataFragment], out: table_pb2.DataFragment) -> str:
    """Merge the inputs' deleted row offsets into one deletion file for ``out`` (binary copy).

    Every physical row is copied, so an input's offset k becomes (rows of the inputs before
    it) + k. Returns the encoded file as base64 ("" when nothing is deleted) and fills
    ``out.deletion_file`` except its id and read version, which the commit sets when it names
    the file.
    """
    merged: list[int] = []
    base = 0
    for frag in inputs:
        merged.extend(base + offset for offset in deleted_offsets(ds, frag))
        base += frag.physical_rows
    if not merged:
        return ""
    encoded = encode_deletion_file(merged)
    out.deletion_file.file_type = encoded.file_type.value
    out.deletion_file.num_deleted_rows = encoded.num_deleted_rows
    return base64.b64encode(encoded.data).decode("ascii")
