"""Reading a data file's metadata from its end: one ranged read, more only when the parser asks."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from lance_assets.errors import CorruptFileError
from lance_assets.format import legacy, v2file
from lance_assets.io import Storage

if TYPE_CHECKING:
    from typing_extensions import TypeIs  # typing.TypeIs is Python 3.13


class _NeedMore(Protocol):
    """What a tail parser returns when it needs the bytes from ``offset`` on."""

    @property
    def offset(self) -> int: ...


T = TypeVar("T")
N = TypeVar("N", bound=_NeedMore)


def _asks_for_more(parsed: T | N, need_more: type[N]) -> TypeIs[N]:
    """Whether ``parsed`` is the parser's request for more bytes (else it is the metadata)."""
    return isinstance(parsed, need_more)


def read_parsed_tail(
    storage: Storage,
    rel_path: str,
    parse: Callable[..., T | N],
    need_more: type[N],
    first_bytes: int,
    size_hint: int = 0,
) -> tuple[T, bytes, int]:
    """Read the last ``first_bytes`` of ``rel_path`` and ``parse(tail, offset, size, path=...)`` them.

    ``parse`` returns the metadata or a ``need_more`` instance whose ``offset`` (strictly before
    the bytes it was given) says where to read from; the loop then reads the missing prefix and
    parses again. Returns (metadata, the bytes read, their offset in the file): for small files
    that is the whole file. ``size_hint`` (the manifest's file size) saves a size request.
    """
    where = storage.url(rel_path)
    tail, size = storage.read_tail(rel_path, first_bytes, size_hint or None)
    offset = size - len(tail)
    while True:
        parsed = parse(tail, offset, size, path=where)
        if not _asks_for_more(parsed, need_more):
            return parsed, tail, offset
        want = parsed.offset
        if not 0 <= want < offset:
            raise CorruptFileError("metadata parser asked for bytes it already has", path=where)
        tail = storage.read_exact(rel_path, want, offset) + tail
        offset = want


def read_v2_metadata(storage: Storage, rel_path: str, size_hint: int = 0) -> v2file.V2FileMetadata:
    """Parse a v2 data file's metadata with one tail read (two for unusually large metadata)."""
    return read_v2_tail(storage, rel_path, size_hint)[0]


def read_v2_tail(
    storage: Storage, rel_path: str, size_hint: int = 0, first_bytes: int = v2file.DEFAULT_TAIL_BYTES
) -> tuple[v2file.V2FileMetadata, bytes, int]:
    """The metadata, plus the bytes read for it and where they start in the file."""
    return read_parsed_tail(storage, rel_path, v2file.parse_tail, v2file.NeedMore, first_bytes, size_hint)


def read_legacy_metadata(storage: Storage, rel_path: str, size_hint: int = 0) -> legacy.LegacyFileMetadata:
    """Parse a legacy (0.x) data file's tail (one read for typical files)."""
    return read_legacy_tail(storage, rel_path, size_hint)[0]


def read_legacy_tail(storage: Storage, rel_path: str, size_hint: int = 0) -> tuple[legacy.LegacyFileMetadata, bytes, int]:
    """The legacy metadata, plus the bytes read for it and where they start in the file."""
    return read_parsed_tail(storage, rel_path, legacy.parse_tail, legacy.NeedMore, legacy.DEFAULT_TAIL_SIZE, size_hint)
