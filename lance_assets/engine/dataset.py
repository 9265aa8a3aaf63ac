"""Open one version of a Lance dataset: find its manifest, parse it, expose its parts.

This is the only place that turns a URI into parsed table metadata, so the
CLI, the planner and the Dagster sensor all see a dataset the same way.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from lance_assets._proto import table_pb2
from lance_assets.errors import MissingFileError, NotADatasetError, StorageError, VersionNotFoundError
from lance_assets.format import manifest as mf
from lance_assets.io import Storage

# The dataset's folders, relative to its root.
VERSIONS_DIR = "_versions"
DATA_DIR = "data"
DELETIONS_DIR = "_deletions"
TRANSACTIONS_DIR = "_transactions"
INDICES_DIR = "_indices"
HINT_FILE = f"{VERSIONS_DIR}/latest_version_hint.json"

# The manifest last opened through each Storage: a committed manifest never changes, so opening
# that version again through the same Storage (planning, then the copy, then the commit finding
# it is still the latest) reads it once; finding it (listing, probe) is still done each time, so a
# version cleaned up meanwhile is still refused. On an object store each read is a round trip.
_LAST_OPENED: weakref.WeakKeyDictionary[Storage, tuple[VersionLocation, mf.ManifestFile]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class VersionLocation:
    """Where one manifest lives."""

    version: int
    scheme: mf.NamingScheme

    @property
    def rel_path(self) -> str:
        return f"{VERSIONS_DIR}/{mf.manifest_name(self.version, self.scheme)}"


def list_versions(storage: Storage) -> list[VersionLocation]:
    """Every committed version, oldest first. Listing is the source of truth."""
    found: dict[int, VersionLocation] = {}
    schemes = set()
    for entry in storage.list(VERSIONS_DIR):
        parsed = mf.parse_manifest_name(entry.name)
        if parsed is None:
            continue
        version, scheme = parsed
        schemes.add(scheme)
        found[version] = VersionLocation(version, scheme)
    if len(schemes) > 1:
        raise NotADatasetError("_versions/ mixes V1 and V2 manifest naming schemes", path=storage.uri)
    return [found[v] for v in sorted(found)]


def _read_hint(storage: Storage) -> int | None:
    try:
        raw = storage.read(HINT_FILE)
        value = json.loads(raw)["version"]
        return int(value) if isinstance(value, int) and value > 0 else None
    except (MissingFileError, StorageError, ValueError, KeyError, TypeError):
        return None


def _probe(storage: Storage, version: int) -> VersionLocation | None:
    for scheme in (mf.NamingScheme.V2, mf.NamingScheme.V1):
        loc = VersionLocation(version, scheme)
        if storage.file_exists(loc.rel_path):
            return loc
    return None


def latest_version(storage: Storage) -> VersionLocation:
    """The newest committed version.

    The hint file is trusted only as a starting point: from the hinted version
    we probe forward until a version is missing. Without a usable hint we list
    ``_versions/`` (which is always correct, just slower on huge histories).
    """
    hint = _read_hint(storage)
    if hint is not None:
        loc = _probe(storage, hint)
        if loc is not None:
            while True:
                nxt = VersionLocation(loc.version + 1, loc.scheme)
                if not storage.file_exists(nxt.rel_path):
                    return loc
                loc = nxt
    versions = list_versions(storage)
    if not versions:
        raise NotADatasetError("no manifest under _versions/ (not a Lance dataset)", path=storage.uri)
    return versions[-1]


def locate_version(storage: Storage, version: int) -> VersionLocation:
    loc = _probe(storage, version)
    if loc is None:
        if not list_versions(storage):
            raise NotADatasetError("no manifest under _versions/ (not a Lance dataset)", path=storage.uri)
        raise VersionNotFoundError(f"version {version} does not exist", path=storage.uri)
    return loc


def _read_manifest(storage: Storage, loc: VersionLocation) -> mf.ManifestFile:
    try:
        raw = storage.read(loc.rel_path)
    except MissingFileError:
        raise VersionNotFoundError(f"manifest of version {loc.version} vanished while reading", path=storage.uri) from None
    parsed = mf.parse_manifest_file(raw, path=storage.url(loc.rel_path))
    if parsed.manifest.version != loc.version:
        raise NotADatasetError(f"{loc.rel_path} claims version {parsed.manifest.version}", path=storage.uri)
    return parsed


@dataclass(frozen=True)
class Dataset:
    """One version of a dataset, read once; cheap to pass around, never mutated."""

    storage: Storage
    location: VersionLocation
    file: mf.ManifestFile

    @classmethod
    def open(
        cls,
        uri: str | Storage,
        version: int | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> Dataset:
        """Open one version of a dataset: its manifest, read and checked once.

        Opening is where every unsupported dataset is refused (unknown reader feature flags,
        a manifest that is not what its name says), so that code holding a Dataset can trust
        it; and one parsed manifest is shared by planning, copying and inspection instead of
        each reading it again.

        Args:
            uri: A URI (local path, ``s3://``, ``gs://``, ``az://``, ``memory://``) or an
                open :class:`~lance_assets.io.Storage` to reuse.
            version: The version to open; default the latest (found from the version hint,
                else by listing ``_versions/``). Its manifest is not read again when it is
                the one last opened through the same Storage (committed manifests never
                change; that it still exists is checked all the same).
            storage_options: Filesystem options (credentials, endpoint) for a URI.

        Returns:
            The opened version, never mutated.

        Raises:
            NotADatasetError: No manifest under ``_versions/``, or one claiming another version.
            VersionNotFoundError: ``version`` does not exist, or its manifest vanished while
                being read (a concurrent cleanup).
            UnknownFeatureFlagError: The manifest sets a reader flag we do not implement.
            CorruptFileError: The manifest does not parse.
            StorageError: The store failed (permissions, network).

        Examples:
            >>> from lance_assets.engine import Dataset
            >>> ds = Dataset.open("s3://bucket/events.lance", storage_options={"aws_region": "eu-west-1"})
            >>> ds.version, len(ds.fragments)
            >>> Dataset.open(ds.storage, version=ds.version - 1).version
        """
        storage = uri if isinstance(uri, Storage) else Storage(uri, storage_options)
        loc = latest_version(storage) if version is None else locate_version(storage, version)
        last = _LAST_OPENED.get(storage)  # (the manifest is known to be there still: listed or probed)
        parsed = last[1] if last is not None and last[0] == loc else _read_manifest(storage, loc)
        _LAST_OPENED[storage] = (loc, parsed)
        ds = cls(storage, loc, parsed)
        mf.check_feature_flags(parsed.manifest, path=storage.uri, for_write=False)
        return ds

    # -- convenience ------------------------------------------------------------
    @property
    def uri(self) -> str:
        return self.storage.uri

    @property
    def version(self) -> int:
        return self.location.version

    @property
    def manifest(self) -> table_pb2.Manifest:
        return self.file.manifest

    @property
    def fragments(self) -> list[table_pb2.DataFragment]:
        return list(self.manifest.fragments)

    @property
    def indices(self) -> list[table_pb2.IndexMetadata]:
        return list(self.file.index_section.indices) if self.file.index_section else []

    @cached_property
    def storage_version(self) -> tuple[int, int]:
        return mf.storage_version(self.manifest, path=self.uri)

    @cached_property
    def stable_row_ids(self) -> bool:
        # Cached: the planner asks once per fragment.
        return bool(self.manifest.reader_feature_flags & mf.FLAG_STABLE_ROW_IDS)

    def data_bytes(self, files: Iterable[table_pb2.DataFile], *, exact: bool = True) -> int:
        """Bytes of the given data files as the manifest records them.

        Older writers record 0 (unknown); with ``exact`` those sizes are looked
        up in storage, otherwise they count as 0 (planning opens nothing unless
        a byte cap needs it). A plain loop: it runs for every fragment.
        """
        total = 0
        for df in files:
            size = df.file_size_bytes
            if not size and exact:
                size = self.storage.size(self.data_file_path(df))
            total += size
        return total

    def data_file_path(self, data_file: table_pb2.DataFile) -> str:
        """Path of a data file relative to the dataset root (or a base path URL)."""
        return self._under_base(DATA_DIR, data_file.path, data_file.base_id if data_file.HasField("base_id") else None)

    def deletion_file_path(self, fragment: table_pb2.DataFragment) -> str:
        d = fragment.deletion_file
        ext = "bin" if d.file_type == table_pb2.DeletionFile.BITMAP else "arrow"
        name = f"{fragment.id}-{d.read_version}-{d.id}.{ext}"
        return self._under_base(DELETIONS_DIR, name, d.base_id if d.HasField("base_id") else None)

    def _under_base(self, folder: str, name: str, base_id: int | None) -> str:
        if base_id is None:
            return f"{folder}/{name}"
        for base in self.manifest.base_paths:
            if base.id == base_id:
                if base.is_dataset_root:
                    return f"{base.path.rstrip('/')}/{folder}/{name}"
                return f"{base.path.rstrip('/')}/{name}"
        raise NotADatasetError(f"base path id {base_id} is not declared in the manifest", path=self.uri)


#: The first parameter of every engine entry point: where the dataset is. A URI string (local
#: path, ``s3://``, ``gs://``, ``az://``, ``memory://``; credentials in ``storage_options``), an
#: open :class:`Dataset` (its storage is reused and, where the entry point reads the latest
#: version, it is reused when it still is the latest), or a :class:`~lance_assets.io.Storage`
#: (a configured filesystem, e.g. with a commit lock).
DatasetRef = str | Dataset | Storage


def storage_of(ref: DatasetRef, storage_options: Mapping[str, Any] | None = None) -> Storage:
    """The storage behind ``ref`` (``storage_options`` apply to a URI only)."""
    if isinstance(ref, Dataset):
        return ref.storage
    if isinstance(ref, Storage):
        return ref
    return Storage(ref, storage_options)


def open_dataset(ref: DatasetRef, storage_options: Mapping[str, Any] | None = None, version: int | None = None) -> Dataset:
    """``ref`` as an open Dataset at ``version`` (None: an open Dataset as given, else the latest)."""
    if isinstance(ref, Dataset) and (version is None or ref.version == version):
        return ref
    return Dataset.open(storage_of(ref, storage_options), version)
