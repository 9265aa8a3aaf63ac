"""Version retention and orphan removal: give back the space old versions and crashed writers hold.

By default (``retain_versions=1``, Lance's semantics) versions committed before the cutoff
(manifest timestamp) that are not among the newest ``retain_versions``, not the latest and not
named by a tag are removed first -- their manifests go before anything else, so a kill leaves
every kept version readable and at worst some files unreferenced, which the next run removes --
then every file only they referenced: data files with their blob sidecar folders
(``data/<stem>/``), deletion and transaction files and index folders no kept version uses.

With ``retain_versions=None`` no version is removed, only orphans go.

Orphans are files no manifest references: what crashed or conflicting writers left behind (a
compaction killed or beaten in a commit race leaves data files, a transaction file or a staging
manifest; pylance leaves the same kinds). They are harmless but cost storage. Orphans go only

* in ``data/`` (data files and blob sidecars whose data file no manifest names),
  ``_deletions/``, ``_transactions/``, ``_indices/<uuid>/`` folders no manifest names, and
  staging names in ``_versions/`` (our ``*.tmp-*`` from ``Storage.create``, object_store's
  ``*#<n>``, the S3 conditional-write probe) -- never a committed manifest of a kept version,
  never a file of unknown purpose;
* when older than the grace period (the same cutoff), because a running writer's files are
  unreferenced until it commits. The cutoff must be longer than the longest compaction, append
  or index build that may run meanwhile; a compaction whose files were removed notices before
  committing and fails without committing anything.

Unfinished multipart uploads (S3) below ``data/`` older than the cutoff are aborted: a killed
writer's half-written data file, invisible but billed.

Anything that would make "unreferenced" uncertain refuses the whole cleanup: an
unparseable manifest, unknown feature flags or fragment fields (a newer Lance
may reference files we would not see), base paths, branches.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid as uuid_mod
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from lance_assets._proto import table_pb2
from lance_assets.engine.dataset import (
    DATA_DIR,
    DELETIONS_DIR,
    HINT_FILE,
    INDICES_DIR,
    TRANSACTIONS_DIR,
    VERSIONS_DIR,
    Dataset,
    DatasetRef,
    list_versions,
    storage_of,
)
from lance_assets.engine.maintenance.index_upkeep import trim_reuse_index
from lance_assets.engine.options import DEFAULT_OLDER_THAN_SECONDS as DEFAULT_OLDER_THAN_SECONDS
from lance_assets.engine.options import parse_duration as parse_duration
from lance_assets.errors import CorruptFileError, MissingFileError, UnsupportedFeatureError, VersionNotFoundError
from lance_assets.format import manifest as mf
from lance_assets.format.protobuf import unknown_field_numbers
from lance_assets.io import Storage
from lance_assets.io.ahead import ordered_ahead
from lance_assets.io.storage import Entry

logger = logging.getLogger(__name__)

#: Lance's cleanup_old_versions default cutoff: two weeks.
DEFAULT_OLDER_THAN = timedelta(seconds=DEFAULT_OLDER_THAN_SECONDS)

TAGS_DIR = "_refs/tags"

# Staging names in _versions/: ours ("<manifest>.tmp-<hex>", the conditional-write probe),
# object_store's local staging ("<name>#<n>"), Lance's rename-commit temporaries.
_STAGING = re.compile(r".+\.tmp-[0-9a-f]+|\.lance-assets-probe-[0-9a-f]+|.+#\d+|\.tmp_.+|.+\.manifest-[0-9a-f-]{32,36}")

# Blob sidecars of data/<stem>.lance live in data/<stem>/ (one level, *.blob); index files in
# _indices/<uuid>/. Anything else below those folders is of unknown purpose and never touched.
_SIDECAR = re.compile(r"[^/]+/[^/]+\.blob")
_INDEX_FILE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/.+")


@dataclass(frozen=True)
class RemovedFile:
    path: str
    bytes: int
    kind: str  # data | blob | deletion | transaction | staging | manifest | index
    age_seconds: float


#: Earlier names of ``CleanupReport.to_dict`` keys, still written for one release so that
#: readers can move to the new name (old -> new); then they go.
DEPRECATED_JSON_KEYS = {"removed": "files_removed", "bytes": "bytes_removed"}


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
    removed_versions: list[int] = field(default_factory=list)
    versions_kept: int = 0
    reuse_versions_trimmed: int = 0

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        """The fields, plus the counts ``files_removed``, ``bytes_removed`` and
        ``versions_removed`` (``removed_versions`` is the list of version numbers), plus the
        deprecated names of two of those counts (:data:`DEPRECATED_JSON_KEYS`)."""
        out = asdict(self)
        out["files_removed"] = len(self.files)
        out["bytes_removed"] = self.bytes
        out["versions_removed"] = len(self.removed_versions)
        for old, new in DEPRECATED_JSON_KEYS.items():
            out[old] = out[new]
        return out


@dataclass
class _References:
    data: set[str] = field(default_factory=set)
    deletions: set[str] = field(default_factory=set)
    transactions: set[str] = field(default_factory=set)
    external: set[str] = field(default_factory=set)  # row-id / version sequences stored in other files
    indices: set[str] = field(default_factory=set)  # _indices/<uuid> folders

    @property
    def files(self) -> set[str]:
        return self.data | self.deletions | self.transactions

    def absorb(self, other: _References) -> None:
        self.data |= other.data
        self.deletions |= other.deletions
        self.transactions |= other.transactions
        self.external |= other.external
        self.indices |= other.indices


def _collect(refs: _References, raw: bytes, where: str) -> float:
    """Add what one manifest references to ``refs``; returns its commit time (epoch seconds)."""
    parsed = mf.parse_manifest_file(raw, path=where)
    m = parsed.manifest
    for idx in parsed.index_section.indices if parsed.index_section is not None else ():
        refs.indices.add(f"{INDICES_DIR}/{uuid_mod.UUID(bytes=bytes(idx.uuid.uuid))}")
    mf.check_feature_flags(m, path=where, for_write=True)
    if len(m.base_paths):
        raise UnsupportedFeatureError(
            "the manifest declares base paths; cleanup cannot tell which files other datasets share", path=where
        )
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
    return m.timestamp.seconds + m.timestamp.nanos / 1e9


def _owner(rel: str, kind: str) -> str:
    """The path whose reference keeps ``rel``: a blob sidecar ``data/<stem>/<id>.blob`` lives as
    long as its data file ``data/<stem>.lance``, an index file as long as its ``_indices/<uuid>``."""
    if kind == "blob":
        return rel.rsplit("/", 1)[0] + ".lance"
    if kind == "index":
        return "/".join(rel.split("/", 2)[:2])
    return rel


def _manifest_names(listing: Iterable[Entry]) -> list[str]:
    """Every manifest-like file in a listing of _versions/: committed versions and anything else named *.manifest."""
    return sorted(e.name for e in listing if e.name.endswith(".manifest"))


def _read_references(
    storage: Storage, names: list[str], refs: _References, removable: Callable[[str, float], bool] | None = None
) -> tuple[list[str], _References]:
    """Collect into ``refs`` what the manifests ``names`` reference -- except those
    ``removable(name, commit_time)`` says go: returns their names and what they reference."""
    doomed: list[str] = []
    gone = _References()

    def read(name: str) -> bytes:
        rel = f"{VERSIONS_DIR}/{name}"
        try:
            return storage.read(rel)
        except MissingFileError:
            # One vanishing means another cleanup (ours or pylance's) is running. Do not guess.
            raise CorruptFileError(
                "a manifest vanished while cleanup read it; run cleanup again", path=storage.url(rel)
            ) from None

    # On an object store the manifests are read ahead (a request each, in flight together);
    # they are still judged one by one, in order. Local disks read in turn.
    in_flight = 1 if storage.is_local else storage.max_in_flight
    for name, raw in ordered_ahead(names, read, max_in_flight=in_flight, thread_name="lance-assets-manifests"):
        rel = f"{VERSIONS_DIR}/{name}"
        found = _References()
        committed = _collect(found, raw, storage.url(rel))
        if removable is not None and removable(name, committed):
            doomed.append(name)
            gone.absorb(found)
        else:
            refs.absorb(found)
    return doomed, gone


def _tagged_versions(storage: Storage, versions: set[int]) -> set[int]:
    """Versions that tags name; a tag we cannot read, on a branch, or naming a missing version
    refuses the cleanup (removing its version would break it)."""
    tagged = set()
    for entry in storage.list(TAGS_DIR):
        rel = f"{TAGS_DIR}/{entry.name}"
        try:
            tag = json.loads(storage.read(rel))
            version = tag["version"]
        except (ValueError, KeyError, TypeError):
            raise CorruptFileError("tag file does not parse", path=storage.url(rel)) from None
        if tag.get("branch"):
            raise UnsupportedFeatureError(
                f"tag {entry.name} points into branch {tag['branch']!r}, which cleanup does not understand", path=storage.url(rel)
            )
        if not isinstance(version, int) or version not in versions:
            raise VersionNotFoundError(f"tag {entry.name} names version {version}, which does not exist", path=storage.url(rel))
        tagged.add(version)
    return tagged


def cleanup(
    uri: DatasetRef,
    *,
    older_than: timedelta = DEFAULT_OLDER_THAN,
    retain_versions: int | None = 1,
    dry_run: bool = False,
    trim_reuse: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> CleanupReport:
    """Remove old versions and every file older than ``older_than`` that no kept
    version references -- the space a compaction frees comes back only here, because every older
    version still names the small files it merged.

    Args:
        uri: the dataset (or an open Storage).
        older_than: the cutoff (default two weeks, as Lance's), for versions (their commit time)
            and files (their modification time) alike; longer than any writer that may run
            meanwhile. A number of seconds is still read, for one release, with a
            DeprecationWarning.
        retain_versions: keep at least this many newest versions (default 1: only the latest);
            ``None`` removes no version (orphans only). The latest version and tagged versions
            are always kept.
        dry_run: report what would go, remove nothing.
        trim_reuse: first drop the fragment-reuse versions every index has caught up with
            (one CreateIndex commit, see ``engine.maintenance.index_upkeep.trim_reuse_index``), so the retention
            that follows can reclaim what only they kept.

    Returns:
        What was removed (or, with ``dry_run``, would be): files with their kind and size,
        removed and kept versions, aborted uploads.

    Raises:
        UnsupportedFeatureError, CorruptFileError, VersionNotFoundError: references are uncertain
            (branches, base paths, unknown flags, an unreadable manifest or tag); nothing removed.
        ValueError: a negative cutoff or ``retain_versions`` below 1.

    Examples:
        >>> report = cleanup("data/events.lance", older_than=timedelta(days=7), dry_run=True)
        >>> report.to_dict()["versions_removed"], report.bytes
        (41, 18203344)
        >>> cleanup("data/events.lance", older_than=timedelta(hours=1), retain_versions=None)  # orphans only
    """
    if not isinstance(older_than, timedelta):
        warnings.warn("cleanup(older_than=<seconds>) is deprecated: pass a datetime.timedelta", DeprecationWarning, stacklevel=2)
        older_than = timedelta(seconds=older_than)
    if older_than < timedelta(0):
        raise ValueError("older_than must not be negative")
    seconds = older_than.total_seconds()
    if retain_versions is not None and retain_versions < 1:
        raise ValueError("retain_versions must be at least 1")
    storage = storage_of(uri, storage_options)
    if storage.list("_refs/branches") or storage.exists("tree"):
        raise UnsupportedFeatureError(
            "the dataset has branches (tree/, _refs/branches/); their manifests may reference these files", path=storage.uri
        )

    trimmed = 0
    if trim_reuse:
        trim = trim_reuse_index(Dataset.open(storage), dry_run=dry_run)
        trimmed = trim.reuse_versions_before - trim.reuse_versions_after

    # Candidates are listed before the manifests are read: a file written after this
    # listing is not a candidate, one committed meanwhile is protected by its age.
    candidates, listing = _candidates(storage)

    names = _manifest_names(listing)
    if not any(mf.parse_manifest_name(n) for n in names):
        raise MissingFileError("no manifest under _versions/ (not a Lance dataset); refusing to clean", path=storage.uri)
    clock = time.time() if now is None else now
    locations = list_versions(storage)
    keep: set[int] = set()
    if retain_versions is not None:
        keep = {loc.version for loc in locations[-retain_versions:]} | _tagged_versions(
            storage, {loc.version for loc in locations}
        )

    def removable(name: str, committed: float) -> bool:
        parsed = mf.parse_manifest_name(name)
        return parsed is not None and parsed[0] not in keep and committed < clock - seconds

    refs = _References()
    doomed_manifests, gone = _read_references(storage, names, refs, removable if retain_versions is not None else None)
    sizes = {e.name: (e.size, e.modified) for e in listing}
    candidates += [(f"{VERSIONS_DIR}/{n}", "manifest", *sizes.get(n, (0, None))) for n in doomed_manifests]
    released = gone.indices - refs.indices
    protected = refs.files | refs.indices  # what keeps a candidate: its own path or its owner's

    doomed, too_young, unknown_age = _doomed(candidates, refs, protected, released, clock, seconds)
    if doomed and not dry_run:
        _remove(storage, doomed, names, refs)
    stale_uploads = [u for u in storage.pending_uploads(DATA_DIR) if u.initiated is not None and clock - u.initiated >= seconds]
    if not dry_run:
        for upload in stale_uploads:
            storage.abort_upload(upload)
    report = CleanupReport(
        uri=storage.uri,
        dry_run=dry_run,
        older_than_seconds=seconds,
        versions=sum(1 for n in names if mf.parse_manifest_name(n)),
        removed_versions=sorted(parsed[0] for parsed in map(mf.parse_manifest_name, doomed_manifests) if parsed is not None),
        versions_kept=len(locations) - len(doomed_manifests),
        files=doomed,
        kept_too_young=too_young,
        kept_unknown_age=unknown_age,
        aborted_uploads=len(stale_uploads),
        reuse_versions_trimmed=trimmed,
    )
    _log_cleanup(report)
    return report


_Candidate = tuple[str, str, int, "float | None"]  # path, kind, size, modification time


def _candidates(storage: Storage) -> tuple[list[_Candidate], list[Entry]]:
    """Every file cleanup may remove (data files and sidecars, deletion files, transactions,
    index files, staging leftovers in ``_versions/``), and the ``_versions/`` listing."""
    candidates: list[_Candidate] = []
    for e in storage.list(DATA_DIR, recursive=True):
        kind = "data" if "/" not in e.name else "blob" if _SIDECAR.fullmatch(e.name) else None
        if kind:
            candidates.append((f"{DATA_DIR}/{e.name}", kind, e.size, e.modified))
    for folder, kind in ((DELETIONS_DIR, "deletion"), (TRANSACTIONS_DIR, "transaction")):
        candidates += [(f"{folder}/{e.name}", kind, e.size, e.modified) for e in storage.list(folder)]
    candidates += [
        (f"{INDICES_DIR}/{e.name}", "index", e.size, e.modified)
        for e in storage.list(INDICES_DIR, recursive=True)
        if _INDEX_FILE.fullmatch(e.name)
    ]
    listing = storage.list(VERSIONS_DIR)
    candidates += [
        (f"{VERSIONS_DIR}/{e.name}", "staging", e.size, e.modified)
        for e in listing
        if _STAGING.fullmatch(e.name) and f"{VERSIONS_DIR}/{e.name}" != HINT_FILE
    ]
    return candidates, listing


def _doomed(
    candidates: list[_Candidate],
    refs: _References,
    protected: set[str],
    released: set[str],
    clock: float,
    seconds: float,
) -> tuple[list[RemovedFile], int, int]:
    """The candidates no kept version references that are old enough (removed versions'
    manifests and the index files only they held go whatever their age), and how many were
    kept for being too young or of unknown age."""
    doomed: list[RemovedFile] = []
    too_young = unknown_age = 0
    for rel, kind, size, modified in candidates:
        owner = _owner(rel, kind)
        if owner in protected or rel in refs.external or rel.rsplit("/", 1)[-1] in refs.external:
            continue
        if kind == "manifest" or (kind == "index" and owner in released):
            # chosen by the version rules, whatever the file age
            doomed.append(RemovedFile(rel, size, kind, round(clock - modified, 3) if modified is not None else 0.0))
            continue
        if modified is None:
            unknown_age += 1
            continue
        age = clock - modified
        if age < seconds:
            too_young += 1
            continue
        doomed.append(RemovedFile(rel, size, kind, round(age, 3)))
    return doomed, too_young, unknown_age


def _remove(storage: Storage, doomed: list[RemovedFile], names: list[str], refs: _References) -> None:
    """Delete ``doomed`` (minus what a version committed meanwhile references), manifests first."""
    # Re-read _versions/ just before deleting: a version committed while we worked may
    # reference a candidate (only possible for files older than the grace period if the grace
    # period is shorter than that writer's run; cheap to check anyway).
    new_names = sorted(set(_manifest_names(storage.list(VERSIONS_DIR))) - set(names))
    if new_names:
        logger.info("%s: %d version(s) committed during cleanup; their files are kept", storage.uri, len(new_names))
        _read_references(storage, new_names, refs)
        protected = refs.files | refs.indices
        doomed[:] = [f for f in doomed if _owner(f.path, f.kind) not in protected]
    # Removed versions' manifests first: from then on no version references their files, so a
    # kill at any later point leaves only unreferenced (old) files for the next run.
    for f in doomed:
        if f.kind == "manifest":
            storage.delete(f.path, missing_ok=True)
    storage.delete_many([f.path for f in doomed if f.kind != "manifest"])
    storage.remove_empty_dirs(f.path.rsplit("/", 1)[0] for f in doomed if f.kind == "blob")


def _log_cleanup(report: CleanupReport) -> None:
    """One INFO line of what ``cleanup`` removed (or, dry, would remove); each file at DEBUG."""
    gone = "would be removed (dry run)" if report.dry_run else "removed"
    logger.info(
        "cleanup %s: %d version(s) and %d file(s) (%d bytes) %s, %d version(s) kept; files kept as too young: %d, "
        "of unknown age: %d; stale uploads %s: %d; reuse versions trimmed: %d",
        report.uri,
        len(report.removed_versions),
        len(report.files),
        report.bytes,
        gone,
        report.versions_kept,
        report.kept_too_young,
        report.kept_unknown_age,
        "found" if report.dry_run else "aborted",
        report.aborted_uploads,
        report.reuse_versions_trimmed,
    )
    for f in report.files:
        logger.debug("cleanup %s: %s %s (%d bytes, %.0f s old) %s", report.uri, f.kind, f.path, f.bytes, f.age_seconds, gone)


def bytes_on_disk(uri: DatasetRef, storage_options: Mapping[str, Any] | None = None) -> int:
    """Bytes the dataset's files take -- data files with their blob sidecars, deletions,
    transactions, manifests and index folders -- for plots of what retention gives back."""
    storage = storage_of(uri, storage_options)
    folders = (DATA_DIR, DELETIONS_DIR, TRANSACTIONS_DIR, VERSIONS_DIR, INDICES_DIR)
    return sum(e.size for folder in folders for e in storage.list(folder, recursive=True))
