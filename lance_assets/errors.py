"""One typed error hierarchy for everything lance_assets refuses or cannot do.

Every message names the file (or dataset) and what is wrong with it, because the
people reading these are operators looking at a failed Dagster run or CLI call,
not at our stack trace. Anything else escaping the library is a bug.
"""

from __future__ import annotations


class LanceAssetsError(Exception):
    """Base class: catch this to handle every expected failure."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        self.path = path
        self.reason = message
        super().__init__(f"{path}: {message}" if path else message)


class NotADatasetError(LanceAssetsError):
    """The URI holds no Lance dataset (no _versions/ with a manifest)."""


class VersionNotFoundError(LanceAssetsError):
    """A requested dataset version does not exist."""


class MissingFileError(LanceAssetsError):
    """A file the manifest references is absent."""


class CorruptFileError(LanceAssetsError):
    """Bytes that do not parse as what they claim to be (truncated, bad magic, bad protobuf)."""


class UnsupportedVersionError(LanceAssetsError):
    """A file or dataset format version we do not know how to read or write."""


class UnsupportedFeatureError(LanceAssetsError):
    """A dataset uses a feature flag or construct we refuse to touch."""


class CompactionRefusedError(LanceAssetsError):
    """Compaction cannot proceed safely; nothing was written."""


class CommitConflictError(LanceAssetsError):
    """Another writer committed a change incompatible with ours; our files were removed."""


class StorageError(LanceAssetsError):
    """The storage layer failed (permissions, full disk, network); nothing was committed."""


class AlreadyExistsError(StorageError):
    """A create-if-absent write lost: the object exists already (another writer committed)."""


class UnknownFeatureFlagError(UnsupportedFeatureError):
    """The manifest sets a reader or writer feature flag we do not implement."""


class MissingExtraError(LanceAssetsError):
    """An optional dependency (an extra such as ``ray``) is needed for what was asked."""
