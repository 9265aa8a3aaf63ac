"""Lance deletion files: which physical rows of a fragment are deleted.

A fragment's ``DeletionFile`` message names a file
``_deletions/{fragment_id}-{read_version}-{id}.{arrow|bin}`` holding the
deleted row *offsets* (0-based positions among the fragment's physical rows):

* ``ARROW_ARRAY`` (``.arrow``): an Arrow IPC **file** with exactly one record
  batch whose schema is exactly one non-nullable ``UInt32`` column ``row_id``
  and no metadata; Lance writes it ZSTD-compressed, values in hash-set order.
* ``BITMAP`` (``.bin``): a bare 32-bit portable Roaring bitmap.

Lance compares the Arrow schema for equality (names, type, nullability and
metadata), so a file that differs in any of these is one Lance would refuse;
we refuse it too rather than silently read what Lance would not.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from functools import cache
from typing import TYPE_CHECKING

from lance_assets._proto import table_pb2
from lance_assets.errors import CorruptFileError
from lance_assets.format.roaring import decode_bitmap, encode_bitmap

if TYPE_CHECKING:  # pyarrow (and numpy below it) loads on first use, so importing the package stays cheap
    import pyarrow as pa

# Lance keeps a deletion set as a hash set until it holds this many entries.
# Built in one go from a set of known size, exactly 5000 already becomes a bitmap;
# grown by later deletes, it switches only when it exceeds 5000 (both observed in PL14).
BITMAP_THRESHOLD = 5000

ARROW_MAGIC = b"ARROW1"


@cache
def deletion_schema() -> pa.Schema:
    """Lance's schema of an Arrow deletion file: one non-null UInt32 ``row_id`` column."""
    import pyarrow as pa

    return pa.schema([pa.field("row_id", pa.uint32(), nullable=False)])


_U32_MAX = (1 << 32) - 1
_U32_CODE = "I" if array("I").itemsize == 4 else "L"


class DeletionFileType(IntEnum):
    """``lance.table.DeletionFile.DeletionFileType``; values are the proto enum numbers."""

    ARROW_ARRAY = table_pb2.DeletionFile.ARROW_ARRAY
    BITMAP = table_pb2.DeletionFile.BITMAP

    @property
    def extension(self) -> str:
        return "arrow" if self is DeletionFileType.ARROW_ARRAY else "bin"


@dataclass(frozen=True)
class EncodedDeletionFile:
    """Bytes of a deletion file plus what its ``DeletionFile`` message must say."""

    file_type: DeletionFileType
    data: bytes
    num_deleted_rows: int


def deletion_file_type_for(num_deleted_rows: int) -> DeletionFileType:
    """The format Lance writes for a deletion set of this size built in one go."""
    if num_deleted_rows >= BITMAP_THRESHOLD:
        return DeletionFileType.BITMAP
    return DeletionFileType.ARROW_ARRAY


def deletion_file_name(fragment_id: int, read_version: int, file_id: int, file_type: DeletionFileType | int) -> str:
    """File name inside ``_deletions/``; ``file_id`` is the caller's random u64."""
    return f"{fragment_id}-{read_version}-{file_id}.{DeletionFileType(file_type).extension}"


# ------------------------------------------------------------------------ decoding


def decode_deletion_file(
    data: bytes,
    file_type: DeletionFileType | int,
    *,
    physical_rows: int | None = None,
    path: str | None = None,
) -> list[int]:
    """Sorted, distinct deleted row offsets of a deletion file of ``file_type``.

    With ``physical_rows`` every offset must name an existing row: an offset past
    the end means the file belongs to another fragment or is corrupt, and
    carrying it into a compaction would silently drop nothing or the wrong row.
    """
    kind = DeletionFileType(file_type)
    if kind is DeletionFileType.BITMAP:
        offsets = decode_bitmap(data, path=path)
    else:
        offsets = decode_arrow_deletion_file(data, path=path)
    if physical_rows is not None and offsets and offsets[-1] >= physical_rows:
        raise CorruptFileError(
            f"deletion file names row offset {offsets[-1]} but the fragment has {physical_rows} physical rows",
            path=path,
        )
    return offsets


def decode_arrow_deletion_file(data: bytes, *, path: str | None = None) -> list[int]:
    """Sorted, distinct offsets of an ``ARROW_ARRAY`` file (duplicates merge, as in Lance)."""
    if len(data) < 2 * len(ARROW_MAGIC) or not (
        data[: len(ARROW_MAGIC)] == ARROW_MAGIC and data[-len(ARROW_MAGIC) :] == ARROW_MAGIC
    ):
        raise CorruptFileError("deletion file is not an Arrow IPC file (no ARROW1 magic)", path=path)
    column = _read_single_column(data, path=path)
    if column.null_count:
        raise CorruptFileError(
            f"deletion file holds {column.null_count} null row ids; nulls are not allowed",
            path=path,
        )
    return sorted(set(column.to_pylist()))


def _read_single_column(data: bytes, *, path: str | None) -> pa.Array:
    """The ``row_id`` column of the file's only batch, after Lance's schema checks."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    try:
        reader = ipc.open_file(pa.py_buffer(data))
        schema = reader.schema
        if not schema.equals(deletion_schema(), check_metadata=True):
            raise CorruptFileError(
                f"deletion file schema is {_describe(schema)}, expected {_describe(deletion_schema())}",
                path=path,
            )
        if reader.num_record_batches != 1:
            raise CorruptFileError(
                f"deletion file has {reader.num_record_batches} record batches, expected 1",
                path=path,
            )
        batch = reader.get_batch(0)
        batch.validate(full=True)
    except (pa.ArrowException, ValueError, OSError, NotImplementedError) as exc:
        raise CorruptFileError(f"deletion file is not a readable Arrow IPC file ({exc})", path=path) from None
    return batch.column(0)


def _describe(schema: pa.Schema) -> str:
    fields = ", ".join(
        f"{f.name}: {f.type}{'' if f.nullable else ' not null'}" + (f" metadata={dict(f.metadata)}" if f.metadata else "")
        for f in schema
    )
    meta = f" metadata={dict(schema.metadata)}" if schema.metadata else ""
    return f"[{fields}]{meta}"


# ------------------------------------------------------------------------ encoding


def encode_deletion_file(offsets: Iterable[int], file_type: DeletionFileType | int | None = None) -> EncodedDeletionFile:
    """Encode deleted row offsets; ``file_type=None`` applies Lance's size rule.

    An empty set is refused: Lance writes no deletion file for no deletions,
    and a ``DeletionFile`` with zero rows would be a manifest nobody expects.
    """
    values = _checked_offsets(offsets)
    if not values:
        raise ValueError("no deleted rows: a fragment without deletions has no deletion file")
    kind = deletion_file_type_for(len(values)) if file_type is None else DeletionFileType(file_type)
    if kind is DeletionFileType.BITMAP:
        data = encode_bitmap(values)
    else:
        data = encode_arrow_deletion_file(values)
    return EncodedDeletionFile(kind, data, len(values))


def encode_arrow_deletion_file(offsets: Iterable[int]) -> bytes:
    """An ``ARROW_ARRAY`` deletion file: one ZSTD-compressed batch, Lance's exact schema."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    values = array(_U32_CODE, _checked_offsets(offsets))
    column = pa.Array.from_buffers(pa.uint32(), len(values), [None, pa.py_buffer(values)])
    batch = pa.record_batch([column], schema=deletion_schema())
    sink = pa.BufferOutputStream()
    options = ipc.IpcWriteOptions(compression="zstd")
    with ipc.new_file(sink, deletion_schema(), options=options) as writer:
        writer.write_batch(batch)
    data: bytes = sink.getvalue().to_pybytes()
    return data


def _checked_offsets(offsets: Iterable[int]) -> list[int]:
    values = sorted(set(offsets))
    if values and (values[0] < 0 or values[-1] > _U32_MAX):
        raise ValueError(f"row offsets must lie in 0..{_U32_MAX}, got {values[0]}..{values[-1]}")
    return values
