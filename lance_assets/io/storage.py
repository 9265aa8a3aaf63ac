"""A dataset root on any fsspec filesystem, with the few operations Lance needs.

This is the facade the rest of the package talks to: one ``Storage`` whatever the store, so
the engine never branches on where bytes live. fsspec does the generic work; where a store
offers more (or fsspec costs too much) the facade hands off to a back end: ``local`` for the
OS calls on a local disk (pread, copy_file_range/reflink, hard-link create), ``s3`` for S3's
own calls (conditional put and its probe, bulk deletes, multipart-upload upkeep, option names)
and ``multipart`` for the S3 writer with server-side copies. The back ends raise what the OS
or the store raises; every OS or network failure leaves here as a typed error from
``lance_assets.errors`` so callers (engine, CLI, Dagster) never have to know which filesystem
they were talking to.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as _dt
import errno
import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import IO, Any

from lance_assets.errors import (
    AlreadyExistsError,
    CorruptFileError,
    LanceAssetsError,
    MissingFileError,
    StorageError,
    UnsupportedFeatureError,
)
from lance_assets.io import local, s3, s3_direct
from lance_assets.io.ahead import cut, ordered_ahead
from lance_assets.io.multipart import MultipartComposer

# In-process lock for stores where create-if-absent is emulated (memory://).
_EMULATED_CREATE_LOCK = threading.Lock()

# Our own storage option (never passed to fsspec): the caller declares that no
# other writer can commit concurrently (an external lock, a single writer), so
# a store without conditional writes may commit by "exists? then write".
UNSAFE_COMMIT_OPTION = "lance_assets_unsafe_commit"
#: Requests one stream of reads keeps in flight on an object store unless told otherwise
#: (``CompactionOptions.max_concurrent_requests`` declares the same default).
DEFAULT_MAX_IN_FLIGHT = 16

# Our own storage option: "false" turns off server-side copies of large extents on S3
# (UploadPartCopy), for S3-compatible stores that lack it. On by default.
SERVER_SIDE_COPY_OPTION = "lance_assets_server_side_copy"


#: Protocols fsspec knows that lance_assets refuses before touching them, and why. HDFS goes
#: through pyarrow's libhdfs, which needs a JVM and floods stderr when it has none; it also
#: offers no create-if-absent for commits.
UNSUPPORTED_PROTOCOLS = {
    p: "HDFS (through a JVM) is not a store lance_assets supports; use a local path or an object store (s3://, gs://, az://)"
    for p in ("hdfs", "viewfs", "arrow_hdfs")
}


def decode_option_value(value: str) -> Any:
    """A storage-option value as given on a command line or in string config: JSON if it parses
    (numbers, booleans, objects such as ``client_kwargs``), else the string itself."""
    try:
        return json.loads(value)
    except ValueError:
        return value


_LOCAL_PROTOCOLS = ("file", "local")


def plain_local_root(uri: str) -> str | None:
    """The absolute POSIX path fsspec's local filesystem would use for ``uri`` when it is a plain
    path (no scheme, no chaining, no drive letter: no ``:`` at all) on a POSIX system, else None."""
    if ":" in uri or os.sep != "/" or not uri:
        return None
    if uri.startswith("~"):
        uri = os.path.expanduser(uri)
    elif uri.startswith("./") or uri == ".":
        uri = uri[2:]
    if not uri.startswith("/"):
        uri = f"{os.getcwd()}/{uri}"
    return uri.rstrip("/") or "/"


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("1", "true", "yes", "on")


def fsspec_options(protocol: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Storage options as fsspec wants them: ours removed, pylance's S3 names translated."""
    out = {k: v for k, v in options.items() if k not in (UNSAFE_COMMIT_OPTION, SERVER_SIDE_COPY_OPTION)}
    if protocol not in ("s3", "s3a"):
        return out
    return s3.translate_options(out)


def _modified(info: Mapping[str, Any]) -> float | None:
    """Last-modified time (POSIX seconds) from an fsspec info dict, if the store reports one."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, _dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=_dt.UTC)
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


@dataclass(frozen=True)
class Entry:
    """One object in a listing: its name relative to the listed folder, size and mtime (None if unknown)."""

    name: str
    size: int
    modified: float | None = None


@dataclass(frozen=True)
class PendingUpload:
    """An unfinished multipart upload: the object it would create and when it began (epoch s)."""

    rel: str
    upload_id: str
    initiated: float | None


class Storage:
    """A dataset root (local path or URL) opened through fsspec.

    ``storage_options`` go to the fsspec filesystem (e.g. s3fs's ``key``,
    ``secret``, ``client_kwargs={"endpoint_url": ...}``); pylance's S3 names
    (``aws_access_key_id``, ``aws_endpoint``, ``aws_region`` …) are translated.

    Committing needs create-if-absent (``create``). It is atomic on local disks
    (hard link), on S3 (``If-None-Match: *``, verified once per Storage by a
    probe) and in memory:// (one process). Any other store is refused unless
    the caller passes ``commit_lock`` (a factory of context managers held
    around "exists? then write"; safe among writers sharing that lock) or sets
    the storage option ``lance_assets_unsafe_commit=true`` (the caller
    guarantees a single writer).
    """

    def __init__(
        self,
        uri: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        commit_lock: Callable[[], AbstractContextManager[Any]] | None = None,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self.uri = uri.rstrip("/") or uri
        # Requests a stream of reads (read_ranges_ahead, copy_range) keeps in flight on an object
        # store; the engine sets it from CompactionOptions.max_concurrent_requests. Local disks
        # read in turn: there a read is a page-cache copy, not a wait.
        self.max_in_flight = max_in_flight
        options = dict(storage_options or {})
        self._fs: Any = None
        root = None if fsspec_options("file", options) else plain_local_root(self.uri)
        if root is not None:
            # A plain local path: reads, listings and sizes are OS calls (``local``), so fsspec
            # (asyncio, its registry: a tenth of a second) is imported only if a caller asks for `fs`.
            self.root, self.is_local = root, True
        else:
            import fsspec
            from fsspec.implementations.local import LocalFileSystem

            protocol = fsspec.utils.get_protocol(self.uri)
            if protocol in UNSUPPORTED_PROTOCOLS:
                raise UnsupportedFeatureError(f"{protocol}:// is not supported: {UNSUPPORTED_PROTOCOLS[protocol]}", path=uri)
            try:
                self._fs, root = fsspec.core.url_to_fs(self.uri, **fsspec_options(protocol, options))
            except (ImportError, ValueError, TypeError, OSError) as exc:
                raise StorageError(f"cannot open filesystem ({exc})", path=uri) from None
            self.root = root.rstrip("/")
            self.is_local = isinstance(self._fs, LocalFileSystem)
        self.storage_options = options
        self.commit_lock = commit_lock
        self.unsafe_commit = _truthy(options.get(UNSAFE_COMMIT_OPTION, False))
        # s3fs exposes the raw S3 calls our multipart writer needs (background parts, and
        # parts copied inside the store unless turned off).
        self._s3_calls = s3.has_raw_calls(self._fs, self.protocols)
        # data reads as presigned GETs (``s3_direct``) where the store is plainly configured
        self._direct = (
            s3_direct.DirectReads(self._fs, s3.POOL_CONNECTIONS)
            if self._s3_calls and s3_direct.plain(self._fs.storage_options)
            else None
        )
        self.server_side_copy = self._s3_calls and _truthy(options.get(SERVER_SIDE_COPY_OPTION, True))
        self._conditional_put_verified = False
        self._commit_probe: Future[None] | None = None

    @property
    def fs(self) -> Any:
        """The fsspec filesystem; for a plain local path made on first use."""
        if self._fs is None:
            from fsspec.implementations.local import LocalFileSystem

            self._fs = LocalFileSystem()
        return self._fs

    @property
    def protocols(self) -> tuple[str, ...]:
        if self._fs is None:
            return _LOCAL_PROTOCOLS
        p = self.fs.protocol
        return p if isinstance(p, tuple) else (p,)

    def _refresh(self, rel: str) -> None:
        """Forget cached listings (s3fs caches them forever): other writers change these folders."""
        if not self.is_local:
            with contextlib.suppress(Exception):
                self.fs.invalidate_cache(self.path(rel))

    # -- paths ---------------------------------------------------------------
    def path(self, rel: str) -> str:
        """Filesystem path of ``rel`` (relative to the dataset root)."""
        if "\x00" in rel:  # names come from manifests; os calls raise a bare ValueError on NUL
            raise StorageError(f"invalid object name {rel!r} (contains a NUL byte)", path=self.uri)
        return f"{self.root}/{rel}" if rel else self.root

    def url(self, rel: str) -> str:
        """Human-readable location of ``rel`` for error messages."""
        return f"{self.uri}/{rel}" if rel else self.uri

    # -- reading -------------------------------------------------------------
    def read(self, rel: str, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes ``[start, end)`` of ``rel`` (whole object by default)."""
        if self.is_local and (start is None or start >= 0) and (end is None or end >= 0):
            # What LocalFileSystem.cat_file does, minus its per-call overhead (which
            # dominates reading the metadata of thousands of small files).
            try:
                return local.read(self.path(rel), start, end)
            except OSError as exc:
                raise self._translate(rel, exc) from None
        with self._errors(rel):
            if self._direct is not None:
                direct = self._direct.read(self.path(rel), start, end)
                if direct is not None:
                    return direct
            if start is None and end is None and self._s3_calls:
                # s3fs asks for the size first (a HEAD) to split objects over 50 MiB into
                # concurrent ranges; whole reads here are of metadata (manifests, hints,
                # deletion and transaction files, index files): one GET, one round trip
                whole: bytes = self.fs.cat_file(self.path(rel), max_concurrency=1)
                return whole
            data: bytes = self.fs.cat_file(self.path(rel), start=start, end=end)
            return data

    def read_exact(self, rel: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of ``rel``, all of them: a file that ends sooner is corrupt
        (its metadata pointed past its end), not a short answer to pass on."""
        data = self.read(rel, start, end)
        if len(data) != end - start:
            raise CorruptFileError(f"file ends before {end} (short read at {start})", path=self.url(rel))
        return data

    def read_ranges_ahead(
        self, ranges: Iterable[tuple[str, int, int]], *, max_bytes: int, max_in_flight: int | None = None
    ) -> Iterator[bytes]:
        """The bytes of each ``(rel, start, end)``, in order and all of them (``read_exact``),
        with up to ``max_in_flight`` (default: this Storage's) requests running ahead on an
        object store whose ranges add up to at most ``max_bytes`` (one range is always allowed).
        Local disks read in turn."""
        n = 1 if self.is_local else (max_in_flight or self.max_in_flight)
        for _, data in ordered_ahead(
            ranges, lambda r: self.read_exact(*r), max_in_flight=n, max_bytes=max_bytes, cost=lambda r: r[2] - r[1]
        ):
            yield data

    def size(self, rel: str) -> int:
        with self._errors(rel):
            if self.is_local:
                return os.stat(self.path(rel)).st_size
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
            raise CorruptFileError(
                f"expected {size - start} bytes at offset {start}, got {len(data)} (file shorter than recorded)",
                path=self.url(rel),
            )
        return data, size

    def exists(self, rel: str) -> bool:
        self._refresh(rel)
        with self._errors(rel):
            if self.is_local:
                return os.path.exists(self.path(rel))
            return bool(self.fs.exists(self.path(rel)))

    def file_exists(self, rel: str) -> bool:
        """Whether the object ``rel`` (a file, not a folder) exists: on S3 one HEAD, where
        ``exists`` follows a missing object with a listing (a folder of that name would exist)."""
        if not self._s3_calls:
            return self.exists(rel)
        self._refresh(rel)
        with self._errors(rel):
            return s3.head_exists(self.fs, self.path(rel))

    def list(self, rel_dir: str, *, recursive: bool = False) -> list[Entry]:
        """Objects directly below ``rel_dir`` (with ``recursive``, at any depth, named by their
        path below ``rel_dir``, e.g. ``<stem>/<id>.blob``); an absent folder lists as empty."""
        self._refresh(rel_dir)
        base = self.path(rel_dir).rstrip("/")
        if self.is_local and not recursive:
            with self._errors(rel_dir):
                try:
                    return local.list_files(base, Entry)
                except FileNotFoundError:
                    return []
                except NotADirectoryError:
                    pass  # fsspec lists a file as itself
        with self._errors(rel_dir):
            try:
                if recursive:
                    infos = list(self.fs.find(base, detail=True).values())
                else:
                    infos = self.fs.ls(base, detail=True)
            except FileNotFoundError:
                return []
        out = []
        for info in infos:
            if info.get("type") == "directory":
                continue
            full = info["name"].rstrip("/")
            if recursive:
                # fsspec names may or may not carry the protocol; the part after the folder is the name
                name = full.split(base.split("://", 1)[-1].lstrip("/") + "/", 1)[-1]
            else:
                name = full.rsplit("/", 1)[-1]
            out.append(Entry(name=name, size=int(info.get("size") or 0), modified=_modified(info)))
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

        Memory stays bounded by ``batch_bytes`` (per thread). Local to local on
        filesystems that clone blocks or copy server-side (btrfs, XFS, ZFS, NFS,
        SMB …) uses ``os.copy_file_range``: nothing passes through user space,
        and on reflinking filesystems the range is cut at block boundaries so
        that whole blocks placed at the source's offset modulo the block size
        (see ``clone_block_size``) are shared, not copied.
        Other local filesystems (ext4, tmpfs …) are copied through one reused
        buffer: there copy_file_range falls back to an in-kernel splice that
        measured about 1.5x slower than that (benchmarks/, ext4). Into an S3
        object from ``open_write`` (s3fs), large ranges are copied by the
        store itself (UploadPartCopy). Any other store reads pieces of the range
        with ``max_in_flight`` requests at once, at most ``batch_bytes`` of them
        held, and writes them in order.
        """
        if isinstance(out, MultipartComposer) and not self.is_local:  # a local source is read and uploaded
            with self._errors(rel):
                try:
                    out.copy_range(self.path(rel), start, end, batch_bytes=batch_bytes, max_in_flight=self.max_in_flight)
                except EOFError as exc:
                    raise MissingFileError(str(exc), path=self.url(rel)) from None
            if progress:
                progress(end - start)
            return
        if self.is_local:
            dst_fd = local.fileno(out)
            if dst_fd is not None:
                with self._errors(rel):
                    try:
                        local.copy_range(
                            self.path(rel),
                            start,
                            end,
                            out,
                            dst_fd,
                            batch_bytes=batch_bytes,
                            buffers=self._copy_buffers(),
                            progress=progress,
                        )
                    except EOFError as exc:
                        raise MissingFileError(str(exc), path=self.url(rel)) from None
                return
        pieces = [(rel, a, b) for a, b in cut(start, end, batch_bytes, self.max_in_flight)]
        try:
            for chunk in self.read_ranges_ahead(pieces, max_bytes=batch_bytes):
                with self._errors(rel):
                    out.write(chunk)
                if progress:
                    progress(len(chunk))
        except CorruptFileError as exc:  # a source shorter than its extents: as on a local disk
            raise MissingFileError(exc.reason, path=exc.path) from None

    def copy_object(
        self,
        src: str,
        dst: str,
        size: int,
        *,
        batch_bytes: int,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Create ``dst`` as a copy of the ``size`` bytes of ``src``: inside the store on S3
        (s3fs's copy: CopyObject, or a multipart copy for the largest objects), cloned or copied
        by ``copy_range`` locally, in pieces of at most ``batch_bytes`` elsewhere. A failed copy
        leaves no ``dst``."""
        if self.server_side_copy:
            with self._errors(src):
                self._makedirs_for(dst)
                self.fs.copy(self.path(src), self.path(dst))
            if progress:
                progress(size)
            return
        with self.open_write(dst) as out:
            if size:
                self.copy_range(src, 0, size, out, batch_bytes=batch_bytes, progress=progress)

    def clone_block_size(self, rel_dir: str) -> int:
        """The block size at which local copies into ``rel_dir`` share blocks with their source
        (reflink: btrfs, XFS …), or 0 where copies move bytes.

        A copier that places an extent at its source offset modulo this size has ``copy_range``
        clone it, whatever its length, instead of copying it.
        """
        if not self.is_local:
            return 0
        return local.clone_block_size(self.path(rel_dir))

    def _copy_buffers(self) -> local.CopyBuffers:
        """This Storage's per-thread copy buffers, made on first use (most Storages never copy)."""
        buffers: local.CopyBuffers | None = self.__dict__.get("_copy_buffer_pool")
        if buffers is None:
            buffers = self.__dict__.setdefault("_copy_buffer_pool", local.CopyBuffers())
        return buffers

    # -- writing -------------------------------------------------------------
    def write(self, rel: str, data: bytes) -> None:
        """Write (or replace) ``rel``; only for objects no one else may claim."""
        with self._errors(rel):
            self._makedirs_for(rel)
            if self.is_local:  # a plain file: no fsspec (a commit's only write would import it)
                with open(self.path(rel), "wb") as f:
                    f.write(data)
            else:
                self.fs.pipe_file(self.path(rel), data)

    @contextlib.contextmanager
    def open_write(self, rel: str) -> Iterator[IO[bytes]]:
        """A binary stream that creates ``rel``; removed again if the block raises.

        On S3 (s3fs) it is a ``MultipartComposer``: parts upload in the background, ``copy_range``
        into it copies large extents inside the store (unless turned off), and nothing is
        visible under ``rel`` before the block ends.
        """
        with self._errors(rel):
            self._makedirs_for(rel)
            f: Any
            if self._s3_calls:
                f = MultipartComposer(self.fs, self.path(rel), server_side_copy=self.server_side_copy)
            elif self.is_local:
                f = open(self.path(rel), "wb")  # noqa: SIM115 -- closed below; a plain file needs no fsspec
            else:
                f = self.fs.open(self.path(rel), "wb")
        try:
            with self._errors(rel):
                yield f
                f.close()
        except BaseException:
            with contextlib.suppress(Exception):
                f.abort() if isinstance(f, MultipartComposer) else f.close()
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
            with self._errors(rel):
                try:
                    local.create_exclusive(target, data)
                except FileExistsError:
                    raise AlreadyExistsError("already exists", path=self.url(rel)) from None
            return
        if "memory" in self.protocols:
            with _EMULATED_CREATE_LOCK:
                self._create_unconditionally(rel, data)
            return
        if self.commit_lock is None and not self.unsafe_commit:
            self.check_commit_support()
            self._put_if_absent(rel, data)
            return
        with self.commit_lock() if self.commit_lock is not None else contextlib.nullcontext():
            self._create_unconditionally(rel, data)

    def check_commit_support(self) -> None:
        """Raise StorageError unless ``create`` is a safe create-if-absent on this store.

        Writes nothing on local disks and memory://; on S3 the first call
        probes once that the server honours ``If-None-Match``.
        """
        if self.is_local or "memory" in self.protocols or self.commit_lock is not None or self.unsafe_commit:
            return
        probe, self._commit_probe = self._commit_probe, None
        if probe is not None:
            probe.result()  # started by start_commit_check; raises what the probe raised
        if not self._has_conditional_put():
            raise StorageError(
                f"filesystem {type(self.fs).__name__} cannot create objects only-if-absent, so two writers could "
                f"both commit the same version; use a store with conditional writes (local disk, S3), pass "
                f"commit_lock=, or set the storage option {UNSAFE_COMMIT_OPTION}=true if nothing else writes to "
                f"this dataset while lance_assets commits",
                path=self.uri,
            )
        self._verify_conditional_put()

    def start_commit_check(self) -> None:
        """Begin ``check_commit_support``'s one-off probe (S3) in a background thread, so its
        requests overlap the copy instead of delaying the commit; ``check_commit_support``
        waits for it and raises what it raised. Does nothing where no probe is needed."""
        if (
            self.is_local
            or "memory" in self.protocols
            or self.commit_lock is not None
            or self.unsafe_commit
            or self._conditional_put_verified
            or self._commit_probe is not None
            or not self._has_conditional_put()
        ):
            return
        probe: Future[None] = Future()

        def run() -> None:
            try:
                self._verify_conditional_put()
            except BaseException as exc:
                probe.set_exception(exc)
            else:
                probe.set_result(None)

        self._commit_probe = probe
        threading.Thread(target=run, name="lance-assets-commit-probe", daemon=True).start()

    def settle_commit_check(self) -> None:
        """Wait for a probe ``start_commit_check`` began (its object is gone when this returns);
        its outcome is kept for ``check_commit_support``."""
        probe = self._commit_probe
        if probe is not None:
            with contextlib.suppress(BaseException):
                probe.result()

    def _create_unconditionally(self, rel: str, data: bytes) -> None:
        """ "Exists? then write": only safe while the caller excludes other writers."""
        if self.exists(rel):
            raise AlreadyExistsError("already exists", path=self.url(rel))
        self.write(rel, data)

    def _has_conditional_put(self) -> bool:
        """Stores whose ``pipe_file(mode="create")`` is an atomic conditional PUT (S3)."""
        return s3.has_conditional_put(self.fs)

    def _put_if_absent(self, rel: str, data: bytes) -> None:
        with self._errors(rel):
            try:
                s3.put_if_absent(self.fs, self.path(rel), data)
            except FileExistsError:
                raise AlreadyExistsError("already exists", path=self.url(rel)) from None
            finally:
                self._refresh(rel)

    def _verify_conditional_put(self) -> None:
        """Check once that the server honours ``If-None-Match`` (old S3-compatible servers ignore it).

        Creates a probe object twice; the second create must be refused. A
        store that accepts it would let two writers commit the same version.
        """
        if self._conditional_put_verified:
            return
        accepted_twice = s3.probe_if_none_match(self._put_if_absent, lambda rel: self.delete(rel, missing_ok=True))
        if accepted_twice is not None:
            raise StorageError(
                "the store accepted a second If-None-Match create of the same object: it does not support conditional "
                f"writes, so committing would be unsafe (set {UNSAFE_COMMIT_OPTION}=true only if nothing else writes here)",
                path=self.url(accepted_twice),
            )
        self._conditional_put_verified = True

    def delete(self, rel: str, *, missing_ok: bool = False) -> None:
        with self._errors(rel):
            try:
                self.fs.rm_file(self.path(rel))
            except FileNotFoundError:
                if not missing_ok:
                    raise

    def remove_empty_dirs(self, rel_dirs: Iterable[str]) -> None:
        """Remove the given folders where they exist and are empty (local disks: object stores have
        no folders). Best effort: a folder something was written to meanwhile stays."""
        if not self.is_local:
            return
        for rel in sorted(set(rel_dirs), reverse=True):
            local.remove_empty_dir(self.path(rel))

    def delete_many(self, rels: Sequence[str], *, batch: int = 1000) -> None:
        """Delete many objects, missing ones ignored: on S3 in bulk requests (DeleteObjects,
        ``batch`` keys each), elsewhere one by one."""
        if not self._s3_calls:
            for rel in rels:
                self.delete(rel, missing_ok=True)
            return
        for start in range(0, len(rels), batch):
            chunk = rels[start : start + batch]
            with self._errors(chunk[0]):
                s3.delete_objects(self.fs, [self.path(rel) for rel in chunk])

    def pending_uploads(self, rel_dir: str) -> builtins.list[PendingUpload]:  # (``list`` is the method above)
        """Unfinished multipart uploads below ``rel_dir`` (S3 only; elsewhere none exist).

        A writer killed mid-file leaves one behind: invisible to listings, but billed.
        """
        if not self._s3_calls:
            return []
        with self._errors(rel_dir):
            return [
                PendingUpload(rel=f"{rel_dir.rstrip('/')}/{upload.name}", upload_id=upload.upload_id, initiated=upload.initiated)
                for upload in s3.multipart_uploads(self.fs, self.path(rel_dir))
            ]

    def abort_upload(self, upload: PendingUpload) -> None:
        """Abort an unfinished multipart upload found by ``pending_uploads`` (S3 only)."""
        with self._errors(upload.rel):
            s3.abort_upload(self.fs, self.path(upload.rel), upload.upload_id)

    def _makedirs_for(self, rel: str) -> None:
        if self.is_local and "/" in rel:
            local.makedirs_for(self.path(rel))

    @contextlib.contextmanager
    def _errors(self, rel: str) -> Iterator[None]:
        """Translate filesystem exceptions into our typed errors."""
        try:
            yield
        except StorageError:
            raise
        except OSError as exc:
            raise self._translate(rel, exc) from None
        except Exception as exc:
            # The S3 client stack raises its own errors for what is no bug of ours (no
            # credentials, an endpoint that does not answer); anything else propagates.
            described = s3.describe_client_error(exc)
            if described is None:
                raise
            raise StorageError(described, path=self.url(rel)) from None

    def _translate(self, rel: str, exc: OSError) -> LanceAssetsError:
        if isinstance(exc, FileNotFoundError):
            return MissingFileError("not found", path=self.url(rel))
        if isinstance(exc, PermissionError):
            return StorageError(f"permission denied ({exc.strerror or exc})", path=self.url(rel))
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return StorageError("no space left on device", path=self.url(rel))
        if exc.errno == errno.EROFS:
            return StorageError("read-only file system", path=self.url(rel))
        return StorageError(f"{type(exc).__name__}: {exc}", path=self.url(rel))
