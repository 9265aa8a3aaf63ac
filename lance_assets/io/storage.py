"""A dataset root on any fsspec filesystem, with the few operations Lance needs.

Every OS or network failure leaves here as a typed error from
``lance_assets.errors`` so callers (engine, CLI, Dagster) never have to know
which filesystem they were talking to.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from lance_assets.errors import CorruptFileError, MissingFileError, StorageError

# In-process lock for stores where create-if-absent is emulated (memory://).
_EMULATED_CREATE_LOCK = threading.Lock()


def _local_fileno(stream: IO[bytes]) -> int | None:
    """The OS file descriptor behind a (possibly fsspec-wrapped) local stream, if any."""
    for candidate in (stream, getattr(stream, "f", None)):
        try:
            return candidate.fileno() if candidate is not None else None
        except (AttributeError, OSError, ValueError):
            continue
    return None


class AlreadyExistsError(StorageError):
    """A create-if-absent write lost: the object exists already."""


@dataclass(frozen=True)
class Entry:
    """One object in a listing: its name relative to the listed folder and its size."""

    name: str
    size: int


class Storage:
    """A dataset root (local path or URL) opened through fsspec.

    ``storage_options`` go to the fsspec filesystem unchanged (e.g. s3fs's
    ``key``, ``secret``, ``client_kwargs={"endpoint_url": ...}``).
    """

    def __init__(self, uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.uri = uri.rstrip("/") or uri
        options = dict(storage_options or {})
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.uri, **options)
        except (ImportError, ValueError) as exc:
            raise StorageError(f"cannot open filesystem ({exc})", path=uri) from None
        self.root = self.root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.storage_options = options

    # -- paths ---------------------------------------------------------------
    def path(self, rel: str) -> str:
        """Filesystem path of ``rel`` (relative to the dataset root)."""
        if "\x00" in rel:  # names come from manifests; os calls raise a bare ValueError on NUL
            raise StorageError(f"invalid object name {rel!r} (contains a NUL byte)", path=self.uri)
        return f"{self.root}/{rel}" if rel else self.root

    def url(self, rel: str) -> str:
        """Human-readable location of ``rel`` for error messages."""
        return f"{self.uri}/{rel}" if rel else self.uri

    def local_path(self, rel: str) -> str | None:
        """An OS path for ``rel`` when the root is on the local disk, else None."""
        return self.path(rel) if self.is_local else None

    # -- reading -------------------------------------------------------------
    def read(self, rel: str, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of ``rel`` (whole object by default)."""
        with self._errors(rel):
            return self.fs.cat_file(self.path(rel), start=start, end=end)

    def size(self, rel: str) -> int:
        with self._errors(rel):
            return int(self.fs.size(self.path(rel)))

    def read_tail(self, rel: str, length: int, size: int | None = None) -> tuple[bytes, int]:
        """The last ``length`` bytes of ``rel`` and its total size.

        Passing a known ``size`` (from the manifest) saves a metadata request.
        """
        if not size:
            size = self.size(rel)
        start = max(0, size - length)
        data = self.read(rel, start, size)
        if len(data) != size - start:
            # The file exists (else read() raised MissingFileError) but is shorter than
            # the size recorded for it: truncated, i.e. corrupt, not missing.
            raise CorruptFileError(f"expected {size - start} bytes at offset {start}, got {len(data)} (file shorter than recorded)", path=self.url(rel))
        return data, size

    def exists(self, rel: str) -> bool:
        with self._errors(rel):
            return bool(self.fs.exists(self.path(rel)))

    def list(self, rel_dir: str) -> list[Entry]:
        """Objects directly below ``rel_dir``; an absent folder lists as empty."""
        with self._errors(rel_dir):
            try:
                infos = self.fs.ls(self.path(rel_dir), detail=True)
            except FileNotFoundError:
                return []
        out = []
        for info in infos:
            if info.get("type") == "directory":
                continue
            name = info["name"].rstrip("/").rsplit("/", 1)[-1]
            out.append(Entry(name=name, size=int(info.get("size") or 0)))
        return out

    def copy_range(
        self,
        rel: str,
        start: int,
        end: int,
        out: IO[bytes],
        *,
        batch_bytes: int,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Append bytes ``[start, end)`` of ``rel`` to the open stream ``out``.

        Local to local uses ``os.copy_file_range`` (no copy through user space,
        a reflink on copy-on-write filesystems); anything else reads ranges of
        at most ``batch_bytes``, so memory stays bounded by that figure.
        """
        if self.is_local and hasattr(os, "copy_file_range"):
            dst_fd = _local_fileno(out)
            if dst_fd is not None:
                out.flush()
                with self._errors(rel), open(self.path(rel), "rb") as src:
                    pos = start
                    while pos < end:
                        n = os.copy_file_range(src.fileno(), dst_fd, min(end - pos, batch_bytes), pos)
                        if n == 0:
                            raise MissingFileError(f"file ends at {pos}, expected {end} bytes", path=self.url(rel))
                        pos += n
                        if progress:
                            progress(n)
                out.seek(0, os.SEEK_END)
                return
        pos = start
        while pos < end:
            stop = min(end, pos + batch_bytes)
            chunk = self.read(rel, pos, stop)
            if len(chunk) != stop - pos:
                raise MissingFileError(f"file ends before {stop} (short read at {pos})", path=self.url(rel))
            with self._errors(rel):
                out.write(chunk)
            pos = stop
            if progress:
                progress(len(chunk))

    # -- writing -------------------------------------------------------------
    def write(self, rel: str, data: bytes) -> None:
        """Write (or replace) ``rel``; only for objects no one else may claim."""
        with self._errors(rel):
            self._makedirs_for(rel)
            self.fs.pipe_file(self.path(rel), data)

    @contextlib.contextmanager
    def open_write(self, rel: str) -> Iterator[IO[bytes]]:
        """A binary stream that creates ``rel``; removed again if the block raises."""
        with self._errors(rel):
            self._makedirs_for(rel)
            f = self.fs.open(self.path(rel), "wb")
        try:
            with self._errors(rel):
                yield f
                f.close()
        except BaseException:
            with contextlib.suppress(Exception):
                f.close()
            self.delete(rel, missing_ok=True)
            raise

    def create(self, rel: str, data: bytes) -> None:
        """Create ``rel`` only if it does not exist (the commit primitive).

        Raises AlreadyExistsError when another writer created it first. Local
        disks use a hard link from a temporary file, which fails atomically if
        the name exists (a rename would silently overwrite on POSIX).
        """
        target = self.path(rel)
        if self.is_local:
            self._makedirs_for(rel)
            tmp = f"{target}.tmp-{uuid.uuid4().hex}"
            with self._errors(rel):
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    raise AlreadyExistsError("already exists", path=self.url(rel)) from None
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
            return
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        if "memory" in protocols:
            with _EMULATED_CREATE_LOCK:
                if self.exists(rel):
                    raise AlreadyExistsError("already exists", path=self.url(rel))
                self.write(rel, data)
            return
        with self._errors(rel):
            try:
                self.fs.pipe_file(target, data, mode="create")
            except FileExistsError:
                raise AlreadyExistsError("already exists", path=self.url(rel)) from None
            except TypeError:
                raise StorageError(
                    f"filesystem {type(self.fs).__name__} cannot create objects only-if-absent; committing would be unsafe",
                    path=self.url(rel),
                ) from None

    def delete(self, rel: str, *, missing_ok: bool = False) -> None:
        with self._errors(rel):
            try:
                self.fs.rm_file(self.path(rel))
            except FileNotFoundError:
                if not missing_ok:
                    raise

    def _makedirs_for(self, rel: str) -> None:
        if self.is_local and "/" in rel:
            os.makedirs(os.path.dirname(self.path(rel)), exist_ok=True)

    @contextlib.contextmanager
    def _errors(self, rel: str) -> Iterator[None]:
        """Translate filesystem exceptions into our typed errors."""
        try:
            yield
        except StorageError:
            raise
        except FileNotFoundError:
            raise MissingFileError("not found", path=self.url(rel)) from None
        except PermissionError as exc:
            raise StorageError(f"permission denied ({exc.strerror or exc})", path=self.url(rel)) from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise StorageError("no space left on device", path=self.url(rel)) from None
            raise StorageError(f"{type(exc).__name__}: {exc}", path=self.url(rel)) from None
