"""Manifest files, version naming, transaction names and feature flags.

A manifest file is ``[u32 len][IndexSection]? [u32 len][Transaction]?
[u32 len][Manifest] [i64 manifest position][u16 0][u16 2]["LANC"]``; see
docs/format.md. Parsing and building live together so they cannot disagree.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import Enum

from lance_assets._proto import table_pb2, transaction_pb2
from lance_assets.errors import CorruptFileError, UnknownFeatureFlagError, UnsupportedVersionError
from lance_assets.format.legacy import dictionary_extent
from lance_assets.format.protobuf import parse

MAGIC = b"LANC"
TRAILER_SIZE = 16
_U64_MAX = (1 << 64) - 1

Manifest = table_pb2.Manifest
Transaction = transaction_pb2.Transaction
IndexSection = table_pb2.IndexSection


# --- feature flags: manifest bits naming features a reader or writer must understand ---
FLAG_DELETION_FILES = 1
FLAG_STABLE_ROW_IDS = 2
FLAG_USE_V2_FORMAT_DEPRECATED = 4
FLAG_TABLE_CONFIG = 8
FLAG_MULTIPLE_BASE_PATHS = 16
FLAG_DISABLE_TRANSACTION_FILE = 32
#: Paired (both words): data files may have versions other than the dataset's storage version,
#: as after ``compact_files(data_storage_version=...)`` on part of a dataset.
FLAG_MIXED_FILE_VERSIONS = 256

FLAG_NAMES: dict[int, str] = {
    FLAG_DELETION_FILES: "deletion_files",
    FLAG_STABLE_ROW_IDS: "stable_row_ids",
    FLAG_USE_V2_FORMAT_DEPRECATED: "use_v2_format",
    FLAG_TABLE_CONFIG: "table_config",
    FLAG_MULTIPLE_BASE_PATHS: "multiple_base_paths",
    FLAG_DISABLE_TRANSACTION_FILE: "disable_transaction_file",
    64: "data_overlays",
    128: "covered_index_metadata",
    256: "mixed_data_file_versions",
    512: "fragment_reuse_index_stable_row_ids",
    1024: "tagged_fragment_reuse_index",
    2048: "unnamed_2048",
    4096: "fragment_tree",
    8192: "unnamed_8192",
    16384: "unnamed_16384",
    32768: "non_reusable_field_ids",
}

# Bits whose meaning we implement, for reading and for writing respectively.
KNOWN_READER_FLAGS = (
    FLAG_DELETION_FILES
    | FLAG_STABLE_ROW_IDS
    | FLAG_USE_V2_FORMAT_DEPRECATED
    | FLAG_TABLE_CONFIG
    | FLAG_MULTIPLE_BASE_PATHS
    | FLAG_MIXED_FILE_VERSIONS
)
KNOWN_WRITER_FLAGS = KNOWN_READER_FLAGS | FLAG_DISABLE_TRANSACTION_FILE


def flag_names(flags: int) -> list[str]:
    """Names of the set bits, unknown ones as ``bit_<value>``."""
    return [FLAG_NAMES.get(1 << i, f"bit_{1 << i}") for i in range(64) if flags >> i & 1]


def check_feature_flags(manifest: Manifest, *, path: str | None, for_write: bool) -> None:
    """Refuse a dataset that uses features we do not implement.

    A reader that ignores an unknown reader flag can misread rows; a writer that
    ignores an unknown writer flag can commit a manifest Lance considers corrupt.
    """
    words = [("reader", manifest.reader_feature_flags, KNOWN_READER_FLAGS)]
    if for_write:
        words.append(("writer", manifest.writer_feature_flags, KNOWN_WRITER_FLAGS))
    for word, flags, known in words:
        unknown = flags & ~known
        if unknown:
            raise UnknownFeatureFlagError(
                f"{word} feature flags {', '.join(flag_names(unknown))} are not supported by lance_assets",
                path=path,
            )


def compute_feature_flags(manifest: Manifest) -> tuple[int, int]:
    """Recompute (reader, writer) flags from the manifest, as Lance does on every commit.

    Bits we do not own are carried over unchanged so a paired flag stays paired.
    """
    reader = manifest.reader_feature_flags & ~KNOWN_WRITER_FLAGS
    writer = manifest.writer_feature_flags & ~KNOWN_WRITER_FLAGS
    common = 0
    if any(f.HasField("deletion_file") for f in manifest.fragments):
        common |= FLAG_DELETION_FILES
    if manifest.reader_feature_flags & FLAG_STABLE_ROW_IDS:
        common |= FLAG_STABLE_ROW_IDS
    if len(manifest.base_paths):
        common |= FLAG_MULTIPLE_BASE_PATHS
    dataset_version = storage_version(manifest)
    if any(data_file_version(df) != dataset_version for f in manifest.fragments for df in f.files):
        common |= FLAG_MIXED_FILE_VERSIONS
    reader |= common
    writer |= common
    if len(manifest.config):
        writer |= FLAG_TABLE_CONFIG
    writer |= manifest.writer_feature_flags & FLAG_DISABLE_TRANSACTION_FILE
    return reader, writer


# --- manifest file layout ----------------------------------------------------
@dataclass(frozen=True)
class ManifestFile:
    """A parsed manifest file: the manifest plus the sections stored beside it."""

    manifest: Manifest
    transaction: Transaction | None
    index_section: IndexSection | None
    #: Legacy (0.x) datasets: the dictionary values of the schema's dictionary fields. Lance
    #: writes them at the very start of every manifest file and records their offsets in
    #: ``Field.dictionary``; readers take a dictionary from the manifest file, not from the data
    #: files. So a manifest written on top of this one must hold these bytes at the same offsets.
    dictionaries: bytes = b""


def _section(data: bytes, pos: int, *, path: str | None, what: str, end: int) -> bytes:
    if pos < 0 or pos + 4 > end:
        raise CorruptFileError(f"{what} position {pos} is outside the file", path=path)
    (length,) = struct.unpack_from("<I", data, pos)
    if pos + 4 + length > end:
        raise CorruptFileError(f"{what} length {length} at {pos} runs past the manifest end", path=path)
    return data[pos + 4 : pos + 4 + length]


def parse_manifest_file(data: bytes, *, path: str | None = None) -> ManifestFile:
    """Parse a whole manifest file (they are small: one read)."""
    size = len(data)
    if size < TRAILER_SIZE + 4:
        raise CorruptFileError(f"manifest file is {size} bytes, too short", path=path)
    pos, major, minor = struct.unpack_from("<qHH", data, size - TRAILER_SIZE)
    if data[-4:] != MAGIC:
        raise CorruptFileError("manifest does not end with the LANC magic", path=path)
    if (major, minor) != (0, 2):
        raise UnsupportedVersionError(f"manifest trailer version {major}.{minor} is not 0.2", path=path)
    body_end = size - TRAILER_SIZE
    raw = _section(data, pos, path=path, what="manifest", end=body_end)
    if pos + 4 + len(raw) != body_end:
        raise CorruptFileError("manifest message does not end at the trailer", path=path)
    manifest = parse(Manifest, raw, path=path, what="manifest")

    txn_pos = (
        manifest.transaction_section
        if manifest.HasField("transaction_section")
        else (manifest.transaction_section_v1 if manifest.HasField("transaction_section_v1") else None)
    )
    transaction = None
    if txn_pos is not None:
        txn_raw = _section(data, txn_pos, path=path, what="inline transaction", end=pos)
        transaction = parse(Transaction, txn_raw, path=path, what="inline transaction")
    index_section = None
    if manifest.HasField("index_section"):
        idx_raw = _section(data, manifest.index_section, path=path, what="index section", end=pos)
        index_section = parse(IndexSection, idx_raw, path=path, what="index section")
    sections = [pos, *([] if txn_pos is None else [txn_pos]), *([manifest.index_section] if index_section is not None else [])]
    dictionaries = _dictionary_bytes(data, manifest, min(sections), path)
    return ManifestFile(manifest, transaction, index_section, dictionaries)


def _dictionary_bytes(data: bytes, manifest: Manifest, first_section: int, path: str | None) -> bytes:
    """The bytes ahead of the first section when a legacy schema records a dictionary (else
    none), after checking that every recorded dictionary lies inside them. (2.x files keep their
    dictionaries in their pages; their manifests may still carry a meaningless location.)"""
    legacy = STORAGE_VERSIONS.get(manifest.data_format.version or "0.1") == LEGACY
    located = [f for f in manifest.fields if f.HasField("dictionary")] if legacy else []
    if not located:
        return b""
    for f in located:
        extent = dictionary_extent(f.logical_type, f.dictionary.offset, f.dictionary.length)
        end = f.dictionary.offset if extent is None else extent[2]
        if not 0 <= f.dictionary.offset <= end <= first_section:
            raise CorruptFileError(
                f"dictionary of field {f.name!r} at {f.dictionary.offset} lies outside the manifest's leading bytes "
                f"(0..{first_section})",
                path=path,
            )
    return data[:first_section]


def build_manifest_file(
    manifest: Manifest, transaction: Transaction | None, index_section: IndexSection | None, dictionaries: bytes = b""
) -> bytes:
    """Serialize a manifest file; section positions in ``manifest`` are set here.

    ``dictionaries`` (:attr:`ManifestFile.dictionaries` of the manifest this one is based on)
    is written first, so the dictionary offsets its schema records stay true.

    The inline transaction position is written to tag 23 (what pylance 14
    reads); the older tag 21 is cleared so the two can never disagree.
    """
    manifest = _copy(manifest)
    out = bytearray(dictionaries)
    manifest.ClearField("index_section")
    manifest.ClearField("transaction_section")
    manifest.ClearField("transaction_section_v1")
    if index_section is not None and len(index_section.indices):
        manifest.index_section = len(out)
        _append_section(out, index_section.SerializeToString())
    if transaction is not None:
        manifest.transaction_section = len(out)
        _append_section(out, transaction.SerializeToString())
    manifest_pos = len(out)
    _append_section(out, manifest.SerializeToString())
    out += struct.pack("<qHH", manifest_pos, 0, 2) + MAGIC
    return bytes(out)


def _append_section(out: bytearray, payload: bytes) -> None:
    out += struct.pack("<I", len(payload)) + payload


def _copy(manifest: Manifest) -> Manifest:
    clone = Manifest()
    clone.CopyFrom(manifest)
    return clone


# --- names -------------------------------------------------------------------
class NamingScheme(Enum):
    """How manifest files are named: V1 ``{N}.manifest``, V2 ``{u64::MAX-N:020}.manifest``."""

    V1 = "v1"
    V2 = "v2"


# ASCII digits only and fullmatch (not ``$``, which also matches before a trailing newline):
# Lance parses these names as u64, so "١٢.manifest" or "1.manifest\n" are not versions.
_V2_NAME = re.compile(r"([0-9]{20})\.manifest")
_V1_NAME = re.compile(r"([0-9]+)\.manifest")


def manifest_name(version: int, scheme: NamingScheme) -> str:
    if scheme is NamingScheme.V2:
        return f"{_U64_MAX - version:020d}.manifest"
    return f"{version}.manifest"


def parse_manifest_name(name: str) -> tuple[int, NamingScheme] | None:
    """Version and scheme of a ``_versions/`` entry; None for anything else (staging, hints, detached)."""
    m = _V2_NAME.fullmatch(name)
    if m:
        inverted = int(m.group(1))
        # 20 digits can exceed u64::MAX; such a name is no version (it would come out negative).
        return (_U64_MAX - inverted, NamingScheme.V2) if inverted <= _U64_MAX else None
    m = _V1_NAME.fullmatch(name)
    if m and int(m.group(1)) <= _U64_MAX:
        return int(m.group(1)), NamingScheme.V1
    return None


def transaction_file_name(read_version: int, txn_uuid: str) -> str:
    return f"{read_version}-{txn_uuid}.txn"


def data_file_name(uuid_bytes: bytes) -> str:
    """Lance's data file name: the first 3 uuid bytes as 24 binary digits, the rest as hex.

    The binary prefix spreads keys across object-store partitions.
    """
    if len(uuid_bytes) != 16:
        raise ValueError("a data file name needs 16 random bytes")
    prefix = "".join(f"{b:08b}" for b in uuid_bytes[:3])
    return f"{prefix}{uuid_bytes[3:].hex()}.lance"


# --- storage versions ----------------------------------------------------------
LEGACY = (0, 2)
# manifest data_format.version string -> the (major, minor) pair used in DataFile
STORAGE_VERSIONS: dict[str, tuple[int, int]] = {
    "0.1": LEGACY,
    "legacy": LEGACY,
    "2.0": (2, 0),
    "2.1": (2, 1),
    "2.2": (2, 2),
    "2.3": (2, 3),
}


def storage_version(manifest: Manifest, *, path: str | None = None) -> tuple[int, int]:
    """The dataset's data storage version as the DataFile (major, minor) pair."""
    name = manifest.data_format.version or "0.1"
    try:
        return STORAGE_VERSIONS[name]
    except KeyError:
        raise UnsupportedVersionError(f"data storage version {name!r} is not supported", path=path) from None


def storage_version_name(pair: tuple[int, int]) -> str:
    return "legacy" if pair[0] == 0 else f"{pair[0]}.{pair[1]}"


def data_file_version(data_file: table_pb2.DataFile) -> tuple[int, int]:
    """The file version a DataFile records: (0, 3) is another spelling of 2.0, other (0, x) are legacy."""
    pair = (data_file.file_major_version, data_file.file_minor_version)
    if pair == (0, 3):
        return (2, 0)
    return LEGACY if pair[0] == 0 else pair
