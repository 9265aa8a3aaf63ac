"""The local-disk back end of ``Storage``: the OS calls fsspec's LocalFileSystem does not make.

On a local disk the facade skips fsspec where it costs or cannot do what is needed: ``pread``
instead of ``cat_file`` (its per-call overhead dominates reading the metadata of thousands of
small files), ``copy_file_range`` so that extents are cloned (reflink) or copied server-side
without passing through user space, and a hard link from a staging file as the atomic
create-if-absent that commits a version (a rename would silently overwrite on POSIX).

These functions take OS paths and raise plain ``OSError`` (``EOFError`` for a source shorter
than asked); the facade turns both into typed errors naming the dataset's object.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable
from typing import IO, TypeVar

E = TypeVar("E")

# Filesystems whose copy_file_range clones blocks (reflink) or copies on the server side.
_CLONING_FILESYSTEMS = frozenset({"btrfs", "xfs", "bcachefs", "ocfs2", "zfs", "nfs", "nfs4", "cifs", "smb3"})
# Of those, the ones that share blocks (reflink): only whole blocks at equal offsets modulo the
# block size, so copies there are placed and cut at block boundaries.
_REFLINK_FILESYSTEMS = frozenset({"btrfs", "xfs", "bcachefs", "ocfs2", "zfs"})
_FILESYSTEM_TYPES: dict[int, str] = {}


def _filesystem_type(fd: int) -> str:
    """The type of the filesystem holding ``fd`` ("ext4", "btrfs" …; "" if unknown), from mountinfo."""
    device = os.fstat(fd).st_dev
    found = _FILESYSTEM_TYPES.get(device)
    if found is None:
        found = ""
        with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                major, minor = fields[2].split(":")
                if os.makedev(int(major), int(minor)) == device:
                    found = fields[fields.index("-") + 1]
                    break
        _FILESYSTEM_TYPES[device] = found
    return found


def pread_all(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes at ``offset`` (fewer only at end of file): pread may return short reads."""
    data = os.pread(fd, length, offset)
    if len(data) == length or not data:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        more = os.pread(fd, length - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def read(path: str, start: int | None, end: int | None) -> bytes:
    """Bytes ``[start, end)`` of the file at ``path`` (to its end when ``end`` is None).

    What LocalFileSystem.cat_file does, minus its per-call overhead.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        first = start or 0
        if end is None:
            end = os.fstat(fd).st_size
        return pread_all(fd, max(0, end - first), first)
    finally:
        os.close(fd)


def list_files(folder: str, entry: Callable[[str, int, float], E]) -> list[E]:
    """``entry(name, size, mtime)`` for each file directly in ``folder`` (symlinks followed, as
    fsspec's local listing does; folders left out)."""
    out = []
    with os.scandir(folder) as it:
        for item in it:
            try:
                if item.is_dir():
                    continue
                st = item.stat()
            except OSError:
                try:  # a dangling link: listed with its own size, as fsspec does
                    st = item.stat(follow_symlinks=False)
                except FileNotFoundError:
                    # Gone between the listing and the stat (a writer's temporary file renamed
                    # into place): it is not there, but the folder and its other files are.
                    continue
            out.append(entry(item.name, st.st_size, st.st_mtime))
    return out


def fileno(stream: IO[bytes]) -> int | None:
    """The OS file descriptor behind a (possibly fsspec-wrapped) local stream, if any."""
    for candidate in (stream, getattr(stream, "f", None)):
        try:
            return candidate.fileno() if candidate is not None else None
        except (AttributeError, OSError, ValueError):
            continue
    return None


class CopyBuffers:
    """One reusable copy buffer per thread (allocating a fresh one each time would zero it)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def get(self, size: int) -> memoryview:
        """This thread's buffer, at least ``size`` bytes."""
        buffer: bytearray | None = getattr(self._local, "buffer", None)
        if buffer is None or len(buffer) < size:
            buffer = self._local.buffer = bytearray(size)
        return memoryview(buffer)


def copy_range(
    src_path: str,
    start: int,
    end: int,
    out: IO[bytes],
    dst_fd: int,
    *,
    batch_bytes: int,
    buffers: CopyBuffers,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Append bytes ``[start, end)`` of the file at ``src_path`` to ``out`` (whose descriptor is ``dst_fd``).

    On filesystems that clone blocks or copy server-side this is ``os.copy_file_range``, cut at
    block boundaries on reflinking ones (the caller placed the range at the source's offset
    modulo the block size, so whole blocks are shared). Elsewhere copy_file_range falls back to
    an in-kernel splice that measured about 1.5x slower than one reused buffer (benchmarks/,
    ext4), so the bytes go through ``buffers`` instead. Raises EOFError when the source ends early.
    """
    with open(src_path, "rb", buffering=0) as src:
        kind = _filesystem_type(src.fileno()) if hasattr(os, "copy_file_range") else ""
        if kind in _CLONING_FILESYSTEMS:
            out.flush()
            # Reflinks share whole blocks only: cut the range at block boundaries
            # (the caller placed it at the source's offset modulo the block size).
            block = os.fstatvfs(src.fileno()).f_bsize if kind in _REFLINK_FILESYSTEMS else 0
            pos = start
            while pos < end:
                stop = min(end, pos + batch_bytes)
                if block:
                    boundary = pos - pos % block + block
                    if pos % block:  # up to the first boundary: the rest can be shared
                        stop = min(end, boundary)
                    elif stop < end:
                        stop = min(end, max(stop - stop % block, boundary))
                n = os.copy_file_range(src.fileno(), dst_fd, stop - pos, pos)
                if n == 0:
                    raise EOFError(f"file ends at {pos}, expected {end} bytes")
                pos += n
                if progress:
                    progress(n)
            out.seek(0, os.SEEK_END)
            return
        buffer = buffers.get(min(batch_bytes, end - start))
        src.seek(start)
        pos = start
        while pos < end:
            n = src.readinto(buffer[: min(end - pos, len(buffer))])
            if not n:
                raise EOFError(f"file ends at {pos}, expected {end} bytes")
            out.write(buffer[:n])
            pos += n
            if progress:
                progress(n)


def clone_block_size(dir_path: str) -> int:
    """The block size at which copies into the folder ``dir_path`` share blocks with their source
    (reflink: btrfs, XFS …), or 0 where copies move bytes (or the folder cannot be opened)."""
    if not hasattr(os, "copy_file_range"):
        return 0
    try:
        fd = os.open(dir_path, os.O_RDONLY)
    except OSError:
        return 0
    try:
        return os.fstatvfs(fd).f_bsize if _filesystem_type(fd) in _REFLINK_FILESYSTEMS else 0
    finally:
        os.close(fd)


def makedirs_for(path: str) -> None:
    """Create the folders above the file ``path``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)


def remove_empty_dir(path: str) -> None:
    """Remove the folder ``path`` if it exists and is empty; otherwise leave it (best effort)."""
    with contextlib.suppress(OSError):
        os.rmdir(path)


def create_exclusive(path: str, data: bytes) -> None:
    """Create the file ``path`` holding ``data`` only if it does not exist (FileExistsError if it does).

    The bytes go to a staging file first, synced, then hard-linked to ``path``: the link fails
    atomically if the name exists, and readers never see a partly written file. The staging file
    is removed in every case, also after a failed write (full disk).
    """
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
