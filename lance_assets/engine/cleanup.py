"""Remove files that no manifest references: what crashed or conflicting writers left behind.

A compaction that is killed, or loses a commit race, may leave data files,
a transaction file or a staging manifest behind (pylance leaves the same kinds
of orphans). They are harmless but cost storage. ``cleanup`` deletes exactly
those files and nothing else:

* only in ``data/``, ``_deletions/``, ``_transactions/`` (files no manifest of
  *any* version references) and staging names in ``_versions/`` (our
  ``*.tmp-*`` from ``Storage.create``, object_store's ``*#<n>``, the S3
  conditional-write probe);
* never a manifest, never ``_indices/``, never a file of unknown purpose;
* unfinished multipart uploads (S3) below ``data/`` older than the grace period are
  aborted: a killed writer's half-written data file, invisible but billed;
* only files older than a grace period (default one hour), because a running
  writer's files are unreferenced until it commits. The grace period must be
  longer than the longest compaction (or append) that may run meanwhile; a
  compaction whose files were removed notices before committing and fails
  without committing anything.

Anything that would make "unreferenced" uncertain refuses the whole cleanup: an
unparseable manifest, unknown feature flags or fragment fields (a newer Lance
may reference files we would not see), base paths, branches.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from lance_assets._proto import table_pb2
from lance_assets.engine.dataset import DATA_DIR, DELETIONS_DIR, HINT_FILE, TRANSACTIONS_DIR, VERSIONS_DIR
from lance_assets.errors import CorruptFileError, MissingFileError, UnsupportedFeatureError
from lance_assets.format import manifest as mf
from lance_assets.format.protobuf import unknown_field_numbers
from lance_assets.io import Storage

DEFAULT_OLDER_THAN_SECONDS = 3600.0

# Staging names in _versions/: ours ("<manifest>.tmp-<hex>", the conditional-write probe),
# object_store's local staging ("<name>#<n>"), Lance's rename-commit temporaries.
_STAGING = re.compile(r".+\.tmp-[0-9a-f]+|\.lance-assets-probe-[0-9a-f]+|.+#\d+|\.tmp_.+|.+\.manifest-[0-9a-f-]{32,36}")

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """``30m``, ``2h``, ``7d``, ``1.5h``, ``90s``, ``45`` (seconds) -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(text).lower())
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 2h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class RemovedFile:
    path: str
    bytes: int
    kind: str  # data | deletion | transaction | staging
    age_seconds: float


@dataclass(frozen=True)
class CleanupReport:
    """What ``cleanup`` removed (or would remove, with ``dry_run``); JSON-ready."""

    uri: str
    dry_run: bool
    older_than_seconds: float
    versions: int
    files: list[RemovedFile] = field(default_factory=list)
    kept_too_young: int = 0
    kept_unknown_age: int = 0
    aborted_uploads: int = 0

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["removed"] = len(self.files)
        out["bytes"] = self.bytes
        return out


@dataclass
class _References:
    data: set[str] = field(default_factory=set)
    deletions: set[str] = field(default_factory=set)
    transactions: set[str] = field(default_factory=set)
    external: set[str] = field(default_factory=set)  # row-id / version sequences stored in other files


def _collect(refs: _References, raw: bytes, where: str) -> None:
    parsed = mf.parse_manifest_file(raw, path=where)
    m = parsed.manifest
    mf.check_feature_flags(m, path=where, for_write=True)
    if len(m.base_paths):
        raise UnsupportedFeatureError("the manifest declares base paths; cleanup cannot tell which files other datasets share", path=where)
    if m.transaction_file:
        refs.transactions.add(f"{TRANSACTIONS_DIR}/{m.transaction_file}")
    for frag in m.fragments:
        if unknown_field_numbers(frag):
            raise UnsupportedFeatureError(f"fragment {frag.id} has fields this version of lance_assets does not know", path=where)
        for df in frag.files:
            if unknown_field_numbers(df):
                raise UnsupportedFeatureError(f"a data file of fragment {frag.id} has unknown fields", path=where)
            refs.data.add(f"{DATA_DIR}/{df.path}")
        if frag.HasField("deletion_file"):
            d = frag.deletion_file
            ext = "bin" if d.file_type == table_pb2.DeletionFile.BITMAP else "arrow"
            refs.deletions.add(f"{DELETIONS_DIR}/{frag.id}-{d.read_version}-{d.id}.{ext}")
        for name in ("external_row_ids", "external_last_updated_at_versions", "external_created_at_versions"):
            if frag.HasField(name):
                path = getattr(frag, name).path
                refs.external.add(path)
                refs.external.add(path.rsplit("/", 1)[-1])


def _manifest_names(storage: Storage) -> list[str]:
    """Every manifest-like file in _versions/: committed versions and anything else named *.manifest."""
    return sorted(e.name for e in storage.list(VERSIONS_DIR) if e.name.endswith(".manifest"))


def _read_references(storage: Storage, names: list[str], refs: _References) -> None:
    for name in names:
        rel = f"{VERSIONS_DIR}/{name}"
        try:
            raw = storage.read(rel)
        except MissingFileError:
            # Manifests are never removed by us; one vanishing means another cleanup
            # (pylance's cleanup_old_versions) is running. Do not guess.
            raise CorruptFileError("a manifest vanished while cleanup read it; run cleanup again", path=storage.url(rel)) from None
        _collect(refs, raw, storage.url(rel))


def cleanup(
    uri: str | Storage,
    *,
    older_than: float = DEFAULT_OLDER_THAN_SECONDS,
    dry_run: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> CleanupReport:
    """Remove unreferenced data, deletion, transaction and staging files older than ``older_than`` seconds."""
    if older_than < 0:
        raise ValueError("older_than must not be negative")
    storage = uri if isinstance(uri, Storage) else Storage(uri, storage_options)
    if storage.list("_refs/branches") or storage.exists("tree"):
        raise UnsupportedFeatureError("the dataset has branches (tree/, _refs/branches/); their manifests may reference these files", path=storage.uri)

    # Candidates are listed before the manifests are read: a file written after this
    # listing is not a candidate, one committed meanwhile is protected by its age.
    candidates: list[tuple[str, str, int, float | None]] = []
    for folder, kind in ((DATA_DIR, "data"), (DELETIONS_DIR, "deletion"), (TRANSACTIONS_DIR, "transaction")):
        candidates += [(f"{folder}/{e.name}", kind, e.size, e.modified) for e in storage.list(folder)]
    candidates += [
        (f"{VERSIONS_DIR}/{e.name}", "staging", e.size, e.modified)
        for e in storage.list(VERSIONS_DIR)
        if _STAGING.fullmatch(e.name) and f"{VERSIONS_DIR}/{e.name}" != HINT_FILE
    ]

    names = _manifest_names(storage)
    if not any(mf.parse_manifest_name(n) for n in names):
        raise MissingFileError("no manifest under _versions/ (not a Lance dataset); refusing to clean", path=storage.uri)
    refs = _References()
    _read_references(storage, names, refs)
    referenced = refs.data | refs.deletions | refs.transactions

    clock = time.time() if now is None else now
    doomed: list[RemovedFile] = []
    too_young = unknown_age = 0
    for rel, kind, size, modified in candidates:
        if rel in referenced or rel in refs.external or rel.rsplit("/", 1)[-1] in refs.external:
            continue
        if modified is None:
            unknown_age += 1
            continue
        age = clock - modified
        if age < older_than:
            too_young += 1
            continue
        doomed.append(RemovedFile(rel, size, kind, round(age, 3)))

    if doomed and not dry_run:
        # Re-read _versions/ just before deleting: a version committed while we worked
        # may reference a candidate (only possible for files older than the grace period
        # if the grace period is shorter than that writer's run; cheap to check anyway).
        new_names = sorted(set(_manifest_names(storage)) - set(names))
        if new_names:
            _read_references(storage, new_names, refs)
            referenced = refs.data | refs.deletions | refs.transactions
            doomed = [f for f in doomed if f.path not in referenced]
        for f in doomed:
            storage.delete(f.path, missing_ok=True)
    stale_uploads = [u for u in storage.pending_uploads(DATA_DIR) if u.initiated is not None and clock - u.initiated >= older_than]
    if not dry_run:
        for upload in stale_uploads:
            storage.abort_upload(upload)
    return CleanupReport(
        uri=storage.uri,
        dry_run=dry_run,
        older_than_seconds=older_than,
        versions=sum(1 for n in names if mf.parse_manifest_name(n)),
        files=doomed,
        kept_too_young=too_young,
        kept_unknown_age=unknown_age,
        aborted_uploads=len(stale_uploads),
    )
