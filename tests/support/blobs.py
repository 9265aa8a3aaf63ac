"""Datasets with blob columns, written by pylance, and their blobs read back by pylance.

A scan of a blob column returns *descriptors* (where the bytes are), which a compaction must
change; what must not change are the bytes ``take_blobs`` / ``read_blobs`` return. So tests
compare every other column by scan and the blob columns by their bytes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lance
import pyarrow as pa
from lance.blob import Blob, blob_array, blob_field

from tests.support import factory

#: Thresholds that make every blob v2 kind appear with small values: up to 16 bytes inline, up to
#: 1000 bytes packed into a shared sidecar, larger ones in a sidecar of their own.
INLINE_MAX = 16
PACKED_MAX = 1000

KINDS = ("inline", "packed", "dedicated", "external", "null", "empty")


def blob_v2_field(name: str = "blob") -> pa.Field:
    return blob_field(name, inline_size_threshold=INLINE_MAX, dedicated_size_threshold=PACKED_MAX)


def value(i: int, kind: str, external: Path | None) -> Any:
    """Row ``i``'s blob of the given kind: its bytes depend on ``i`` (so misplaced bytes show)."""
    pattern = bytes((i * 7 + k) % 251 for k in range(64))
    if kind == "inline":
        return pattern[: 1 + i % INLINE_MAX]
    if kind == "packed":
        return (pattern * 20)[: INLINE_MAX + 1 + (i * 37) % (PACKED_MAX - INLINE_MAX - 1)]
    if kind == "dedicated":
        return (pattern * 40)[: PACKED_MAX + 1 + i % 500]
    if kind == "external":
        if external is None:
            raise ValueError("external blobs need a file to point into")
        return Blob.from_uri(external.as_uri(), position=i % 1000, size=1 + i % 97)
    if kind == "null":
        return None
    return Blob.empty()


def external_file(directory: Path) -> Path:
    """A file outside every dataset that external blobs point into (4 KiB of known bytes)."""
    path = directory / "external.bin"
    if not path.exists():
        path.write_bytes(bytes(range(256)) * 16)
    return path


def v2_table(start: int, rows: int, kinds: Sequence[str], external: Path | None) -> pa.Table:
    """``rows`` rows from id ``start``, the blob kinds cycling through ``kinds``."""
    ids = list(range(start, start + rows))
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("tag", pa.string()), blob_v2_field()])
    values = [value(i, kinds[i % len(kinds)], external) for i in ids]
    return pa.table(
        {"id": pa.array(ids, pa.int64()), "tag": pa.array([f"t{i % 7}" for i in ids]), "blob": blob_array(values)}, schema=schema
    )


def v2_appends(
    path: Path | str,
    version: str,
    sizes: Sequence[int],
    kinds: Sequence[str] = KINDS,
    external: Path | None = None,
    **kwargs: Any,
) -> lance.LanceDataset:
    """One fragment per append (blob v2, file version 2.2 or 2.3), ids contiguous."""
    if "external" in kinds and external is None:
        external = external_file(Path(str(path)).parent)
    make: Callable[[int, int], pa.Table] = lambda s, n: v2_table(s, n, kinds, external)  # noqa: E731
    return factory.appends(path, version, list(sizes), make=make, allow_external_blob_outside_bases=True, **kwargs)


def v1_table(start: int, rows: int) -> pa.Table:
    """Blob v1 (large binary marked as blob): values of several sizes, nulls and empty values."""
    ids = list(range(start, start + rows))
    schema = pa.schema(
        [
            pa.field("id", pa.int64()),
            pa.field("tag", pa.string()),
            pa.field("blob", pa.large_binary(), metadata={"lance-encoding:blob": "true"}),
        ]
    )
    values = [
        None if i % 5 == 3 else b"" if i % 5 == 4 else value(i, ("inline", "packed", "dedicated")[i % 3], None) for i in ids
    ]
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "tag": pa.array([f"t{i % 7}" for i in ids]),
            "blob": pa.array(values, pa.large_binary()),
        },
        schema=schema,
    )


def v1_appends(path: Path | str, version: str, sizes: Sequence[int], **kwargs: Any) -> lance.LanceDataset:
    """One fragment per append of blob v1 values (file version 2.0 or 2.1)."""
    return factory.appends(path, version, list(sizes), make=v1_table, **kwargs)


# --- reading blobs back -------------------------------------------------------------------------
def blob_names(ds: lance.LanceDataset) -> list[str]:
    """The dataset's blob columns (blob v2 extension or v1 metadata)."""
    out = []
    for f in ds.schema:
        meta = f.metadata or {}
        if getattr(f.type, "extension_name", "") == "lance.blob.v2" or meta.get(b"lance-encoding:blob") == b"true":
            out.append(f.name)
    return out


def blobs_by_take(ds: lance.LanceDataset, column: str, **select: Any) -> list[bytes | None]:
    """Blob bytes through ``take_blobs`` (file-like handles, read whole)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [None if f is None else f.read() for f in ds.take_blobs(column, **select)]


def blobs_by_read(ds: lance.LanceDataset, column: str, **select: Any) -> list[bytes | None]:
    """Blob bytes through ``read_blobs`` (Lance's planned reader), in the requested order."""
    return [b for _, b in ds.read_blobs(column, preserve_order=True, **select)]


def resolved(ds: lance.LanceDataset) -> pa.Table:
    """The dataset's rows in scan order, every blob column replaced by its bytes."""
    table = ds.to_table()
    n = table.num_rows
    for name in blob_names(ds):
        data = pa.array(blobs_by_take(ds, name, indices=list(range(n))), pa.large_binary())
        table = table.set_column(table.schema.get_field_index(name), name, data)
    return table
