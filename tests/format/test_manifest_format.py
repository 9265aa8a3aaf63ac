"""Manifest files as pylance 14 writes them: parse, rebuild, names, inline transactions, flags."""

from __future__ import annotations

import re
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import lance
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lance_assets.engine.dataset import Dataset, Storage, list_versions
from lance_assets.errors import UnknownFeatureFlagError
from lance_assets.format import manifest as mf
from tests.support import factory

U64_MAX = 2**64 - 1
ALL = [(shape, v) for shape in factory.SHAPES for v in factory.STORAGE_VERSIONS if (shape, v) not in factory.UNSUPPORTED]
ALL_IDS = [f"{s}-{v}" for s, v in ALL]


def manifests(path: Path) -> list[tuple[int, bytes]]:
    """(version, raw manifest file) for every committed version, oldest first."""
    storage = Storage(str(path))
    return [(loc.version, storage.read(loc.rel_path)) for loc in list_versions(storage)]


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# --- parse / rebuild ---------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "version"), ALL, ids=ALL_IDS)
def test_every_manifest_parses_and_rebuilds(dataset_cache: Callable[[str, str], Path], shape: str, version: str) -> None:
    path = dataset_cache(shape, version)
    found = manifests(path)
    assert [v for v, _ in found] == list(range(1, lance.dataset(str(path)).version + 1))
    for v, raw in found:
        parsed = mf.parse_manifest_file(raw, path=f"{path} v{v}")
        assert parsed.manifest.version == v
        rebuilt = mf.build_manifest_file(parsed.manifest, parsed.transaction, parsed.index_section)
        again = mf.parse_manifest_file(rebuilt)
        assert again.manifest == parsed.manifest
        assert again.transaction == parsed.transaction
        assert again.index_section == parsed.index_section
        # we lay the sections out exactly like pylance does, so the bytes come back unchanged
        assert rebuilt == raw, f"version {v}: rebuilt manifest file differs from pylance's"


def test_legacy_dictionaries_are_kept(tmp_path: Path) -> None:
    """pylance writes a legacy schema's dictionary values at the start of every manifest file
    (its readers take them from there); they are parsed out and written back at the same
    offsets, so the rebuilt file is pylance's byte for byte."""
    import pyarrow as pa

    path = tmp_path / "dict.lance"
    values = pa.array(["red", "green", "a much longer colour name"])
    for i in range(3):
        keys = pa.array([None if (i + k) % 4 == 3 else (i + k) % 3 for k in range(5)], pa.int16())
        table = pa.table({"id": pa.array(range(5 * i, 5 * i + 5)), "c": pa.DictionaryArray.from_arrays(keys, values)})
        lance.write_dataset(table, str(path), mode="append" if i else "create", data_storage_version="legacy")
    lance.dataset(str(path)).create_scalar_index("id", "BTREE")
    for v, raw in manifests(path):
        parsed = mf.parse_manifest_file(raw, path=f"v{v}")
        (field,) = [f for f in parsed.manifest.fields if f.name == "c"]
        assert len(parsed.dictionaries) > field.dictionary.offset + 8 * field.dictionary.length
        assert b"a much longer colour name" in parsed.dictionaries
        rebuilt = mf.build_manifest_file(parsed.manifest, parsed.transaction, parsed.index_section, parsed.dictionaries)
        assert rebuilt == raw
        assert mf.parse_manifest_file(rebuilt).dictionaries == parsed.dictionaries


@pytest.mark.parametrize(("shape", "version"), ALL, ids=ALL_IDS)
def test_inline_transaction_matches_pylance(dataset_cache: Callable[[str, str], Path], shape: str, version: str) -> None:
    path = dataset_cache(shape, version)
    found = manifests(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = lance.dataset(str(path)).get_transactions(recent_transactions=len(found))
    assert len(theirs) == len(found)
    for (v, raw), their in zip(reversed(found), theirs):  # pylance lists newest first
        parsed = mf.parse_manifest_file(raw)
        m = parsed.manifest
        # PL14 stores the inline transaction position at tag 23, never at tag 21
        assert m.HasField("transaction_section")
        assert not m.HasField("transaction_section_v1")
        txn = parsed.transaction
        assert txn is not None, f"version {v}: inline transaction not found"
        assert their is not None
        assert txn.read_version == their.read_version == v - 1
        assert txn.uuid == their.uuid
        assert txn.WhichOneof("operation") == snake(type(their.operation).__name__)
        # the .txn file holds the same transaction, under the name we would give it
        assert m.transaction_file == mf.transaction_file_name(txn.read_version, txn.uuid)
        txn_file = (path / "_transactions" / m.transaction_file).read_bytes()
        assert mf.Transaction.FromString(txn_file) == txn


@pytest.mark.parametrize("version", factory.STORAGE_VERSIONS)
@pytest.mark.parametrize(
    ("shape", "ops"),
    [
        ("appends", ["overwrite", "append", "append", "append"]),
        ("deletes_arrow", ["overwrite", "append", "append", "delete"]),
        ("scalar_index", ["overwrite", "append", "append", "create_index"]),
        ("multi_file", ["overwrite", "append", "append", "merge"]),
        ("dropped_column", ["overwrite", "append", "project"]),
    ],
)
def test_known_operation_per_version(dataset_cache: Callable[[str, str], Path], shape: str, ops: list[str], version: str) -> None:
    found = manifests(dataset_cache(shape, version))
    got = []
    for _, raw in found:
        txn = mf.parse_manifest_file(raw).transaction
        got.append(txn.WhichOneof("operation") if txn else None)
    assert got == ops


def _file_with_tag21(parsed: mf.ManifestFile) -> bytes:
    """The layout an older Lance wrote: the transaction position in tag 21 only."""
    m = mf.Manifest()
    m.CopyFrom(parsed.manifest)
    m.ClearField("transaction_section")
    m.ClearField("index_section")
    txn = parsed.transaction.SerializeToString()
    out = struct.pack("<I", len(txn)) + txn
    m.transaction_section_v1 = 0
    body = m.SerializeToString()
    pos = len(out)
    out += struct.pack("<I", len(body)) + body
    return out + struct.pack("<qHH", pos, 0, 2) + b"LANC"


def test_transaction_at_tag_21_is_read_and_rewritten_at_tag_23(dataset_cache: Callable[[str, str], Path]) -> None:
    _, raw = manifests(dataset_cache("appends", "2.1"))[-1]
    parsed = mf.parse_manifest_file(raw)
    old = mf.parse_manifest_file(_file_with_tag21(parsed))
    assert old.transaction == parsed.transaction
    assert old.manifest.HasField("transaction_section_v1") and not old.manifest.HasField("transaction_section")
    new = mf.parse_manifest_file(mf.build_manifest_file(old.manifest, old.transaction, None))
    assert new.manifest.HasField("transaction_section") and not new.manifest.HasField("transaction_section_v1")
    assert new.transaction == parsed.transaction


def test_index_section_is_found(dataset_cache: Callable[[str, str], Path]) -> None:
    path = dataset_cache("scalar_index", "2.2")
    parsed = mf.parse_manifest_file(manifests(path)[-1][1])
    assert parsed.manifest.HasField("index_section")
    assert parsed.index_section is not None
    assert [i.name for i in parsed.index_section.indices] == [d.name for d in lance.dataset(str(path)).describe_indices()]


# --- naming schemes ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def v1_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("v1") / "v1.lance"
    factory.appends(path, "2.1", [10, 20, 30], enable_v2_manifest_paths=False)
    return path


def test_v1_naming_scheme(v1_dataset: Path) -> None:
    names = sorted(p.name for p in (v1_dataset / "_versions").iterdir() if p.name.endswith(".manifest"))
    assert names == ["1.manifest", "2.manifest", "3.manifest"]
    locs = list_versions(Storage(str(v1_dataset)))
    assert [(loc.version, loc.scheme) for loc in locs] == [(v, mf.NamingScheme.V1) for v in (1, 2, 3)]
    for loc in locs:
        ds = Dataset.open(str(v1_dataset), version=loc.version)
        assert ds.location.scheme is mf.NamingScheme.V1
        assert [f.id for f in ds.fragments] == [
            f.fragment_id for f in lance.dataset(str(v1_dataset), version=loc.version).get_fragments()
        ]
    assert Dataset.open(str(v1_dataset)).version == 3


def test_v2_naming_scheme(dataset_cache: Callable[[str, str], Path]) -> None:
    path = dataset_cache("appends", "2.1")
    names = sorted(p.name for p in (path / "_versions").iterdir() if p.name.endswith(".manifest"))
    assert names == [f"{U64_MAX - v:020d}.manifest" for v in (4, 3, 2, 1)]
    assert mf.manifest_name(1, mf.NamingScheme.V2) == "18446744073709551614.manifest"
    assert mf.manifest_name(5, mf.NamingScheme.V2) == "18446744073709551610.manifest"
    assert all(loc.scheme is mf.NamingScheme.V2 for loc in list_versions(Storage(str(path))))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, U64_MAX))
def test_v2_name_round_trip(version: int) -> None:
    name = mf.manifest_name(version, mf.NamingScheme.V2)
    assert len(name) == len("18446744073709551614.manifest")
    assert mf.parse_manifest_name(name) == (version, mf.NamingScheme.V2)


# V1 names of 20 digits are V2 names by Lance's own rule (detection is by length), so V1 stops at 10**19.
@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**19 - 1))
def test_v1_name_round_trip(version: int) -> None:
    name = mf.manifest_name(version, mf.NamingScheme.V1)
    assert mf.parse_manifest_name(name) == (version, mf.NamingScheme.V1)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=30), st.from_regex(r"\A[0-9]{1,25}\.manifest(-[a-f0-9]{4})?\Z"), st.text().map(lambda t: t + ".manifest")
    )
)
def test_parse_manifest_name_accepts_only_u64_version_names(name: str) -> None:
    parsed = mf.parse_manifest_name(name)
    if parsed is None:
        return
    version, scheme = parsed
    assert 0 <= version <= U64_MAX
    stem = name.removesuffix(".manifest")
    assert stem.isascii() and stem.isdigit()
    assert (scheme is mf.NamingScheme.V2) == (len(stem) == 20)
    assert int(stem) == (U64_MAX - version if scheme is mf.NamingScheme.V2 else version)


@pytest.mark.parametrize(
    "name",
    [
        "latest_version_hint.json",
        "d1.manifest",
        "1.manifest-6f1c",
        ".tmp_1.manifest",
        "1.manifest\n",
        "\u0661\u0662.manifest",  # Arabic-Indic digits: not a u64 for Lance
        "99999999999999999999.manifest",  # 20 digits above u64::MAX
        "1" * 21 + ".manifest",  # V1 above u64::MAX
        "-1.manifest",
        "",
    ],
)
def test_parse_manifest_name_rejects(name: str) -> None:
    assert mf.parse_manifest_name(name) is None


def test_data_file_names_follow_lance(dataset_cache: Callable[[str, str], Path]) -> None:
    pattern = re.compile(r"[01]{24}[0-9a-f]{26}\.lance")
    m = mf.parse_manifest_file(manifests(dataset_cache("appends", "2.2"))[-1][1]).manifest
    for frag in m.fragments:
        for df in frag.files:
            assert pattern.fullmatch(df.path)
            prefix = int(df.path[:24], 2).to_bytes(3, "big")
            assert mf.data_file_name(prefix + bytes.fromhex(df.path[24:50])) == df.path
    assert pattern.fullmatch(mf.data_file_name(bytes(range(16))))
    with pytest.raises(ValueError):
        mf.data_file_name(b"short")


# --- feature flags -------------------------------------------------------------------------
def test_flag_names() -> None:
    assert mf.flag_names(0) == []
    assert mf.flag_names(3) == ["deletion_files", "stable_row_ids"]
    assert mf.flag_names(1 | 32) == ["deletion_files", "disable_transaction_file"]
    assert mf.flag_names(1 << 20) == [f"bit_{1 << 20}"]
    assert mf.flag_names(1 << 63) == [f"bit_{1 << 63}"]
    assert len(mf.flag_names(U64_MAX)) == 64


def _with_flags(reader: int, writer: int) -> mf.Manifest:
    m = mf.Manifest()
    m.reader_feature_flags = reader
    m.writer_feature_flags = writer
    return m


@pytest.mark.parametrize("bit", [64, 128, 512, 4096, 32768, 1 << 20, 1 << 40, 1 << 63])
def test_check_feature_flags_refuses_unknown_bits_in_either_word(bit: int) -> None:
    with pytest.raises(UnknownFeatureFlagError, match=f"bit_{bit}|{mf.FLAG_NAMES.get(bit, '@@')}"):
        mf.check_feature_flags(_with_flags(bit | 1, 1), path="ds", for_write=False)
    with pytest.raises(UnknownFeatureFlagError):
        mf.check_feature_flags(_with_flags(bit, 0), path="ds", for_write=True)
    with pytest.raises(UnknownFeatureFlagError) as info:
        mf.check_feature_flags(_with_flags(1, bit | 1), path="ds", for_write=True)
    assert "writer" in str(info.value) and info.value.path == "ds"
    # a reader only cares about the reader word
    mf.check_feature_flags(_with_flags(1, bit | 1), path="ds", for_write=False)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, U64_MAX), st.integers(0, U64_MAX), st.booleans())
def test_check_feature_flags_property(reader: int, writer: int, for_write: bool) -> None:
    bad = reader & ~mf.KNOWN_READER_FLAGS or (for_write and writer & ~mf.KNOWN_WRITER_FLAGS)
    try:
        mf.check_feature_flags(_with_flags(reader, writer), path=None, for_write=for_write)
    except UnknownFeatureFlagError:
        assert bad
    else:
        assert not bad


def test_known_flags_pass() -> None:
    mf.check_feature_flags(_with_flags(1 | 2 | 4 | 8 | 16, 1 | 2 | 4 | 8 | 16 | 32), path=None, for_write=True)


@pytest.mark.parametrize(("shape", "version"), ALL, ids=ALL_IDS)
def test_compute_feature_flags_reproduces_pylance(dataset_cache: Callable[[str, str], Path], shape: str, version: str) -> None:
    for v, raw in manifests(dataset_cache(shape, version)):
        m = mf.parse_manifest_file(raw).manifest
        assert mf.compute_feature_flags(m) == (m.reader_feature_flags, m.writer_feature_flags), f"version {v}"
        mf.check_feature_flags(m, path=None, for_write=True)  # everything pylance wrote here is known to us


@pytest.mark.parametrize("version", factory.STORAGE_VERSIONS)
def test_observed_flag_values(dataset_cache: Callable[[str, str], Path], version: str) -> None:
    def flags(shape: str, k: int = -1) -> tuple[int, int]:
        m = mf.parse_manifest_file(manifests(dataset_cache(shape, version))[k][1]).manifest
        return m.reader_feature_flags, m.writer_feature_flags

    assert flags("appends") == (0, 0)
    assert flags("deletes_arrow") == (1, 1)
    assert flags("deletes_bitmap") == (1, 1)
    assert flags("deletes_arrow", 0) == (0, 0)  # before the delete
    assert flags("stable_row_ids", 0) == (2, 2)
    assert flags("stable_row_ids") == (3, 3)  # stable row ids plus a deletion file

    # and the computation follows the content: add / remove a deletion file
    m = mf.parse_manifest_file(manifests(dataset_cache("appends", version))[-1][1]).manifest
    m.fragments[0].deletion_file.num_deleted_rows = 1
    assert mf.compute_feature_flags(m) == (1, 1)
    m = mf.parse_manifest_file(manifests(dataset_cache("deletes_arrow", version))[-1][1]).manifest
    for f in m.fragments:
        f.ClearField("deletion_file")
    assert mf.compute_feature_flags(m) == (0, 0)
    m.config["lance.x"] = "1"
    assert mf.compute_feature_flags(m) == (0, mf.FLAG_TABLE_CONFIG)


# --- storage versions ------------------------------------------------------------------------
@pytest.mark.parametrize("version", factory.STORAGE_VERSIONS)
def test_storage_version_of_manifest_and_files(dataset_cache: Callable[[str, str], Path], version: str) -> None:
    m = mf.parse_manifest_file(manifests(dataset_cache("appends", version))[-1][1]).manifest
    pair = mf.storage_version(m)
    assert mf.storage_version_name(pair) == version
    for frag in m.fragments:
        for df in frag.files:
            assert mf.data_file_version(df) == pair
