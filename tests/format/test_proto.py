"""Our protobuf layer: generated modules are current, and messages from a newer Lance survive.

The unknown-field tests build their input by splicing raw wire bytes into a real
pylance manifest with a tiny wire-format walker written here (independent of the
protobuf runtime), so they would catch our code dropping fields it does not know.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lance_assets.engine.dataset import Dataset
from lance_assets.format import manifest as mf
from lance_assets.format.protobuf import parse, unknown_field_numbers

ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"


def _python() -> str:
    return str(PYTHON) if PYTHON.exists() else sys.executable


# --- generated modules --------------------------------------------------------------------
def test_generated_modules_are_current() -> None:
    res = subprocess.run(
        [_python(), str(ROOT / "scripts" / "gen_proto.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, f"lance_assets/_proto is stale, run ./dev proto:\n{res.stdout}{res.stderr}"


def _gen_proto_sandbox(tmp_path: Path) -> Path:
    """A copy of the script, proto/ and _proto/ so --check can be exercised on edited protos."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "gen_proto.py", tmp_path / "scripts" / "gen_proto.py")
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copytree(
        ROOT / "lance_assets" / "_proto", tmp_path / "lance_assets" / "_proto", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


def test_gen_proto_check_detects_a_stale_module(tmp_path: Path) -> None:
    """The freshness check is able to fail: an edited .proto makes it exit non-zero."""
    box = _gen_proto_sandbox(tmp_path)
    script = str(box / "scripts" / "gen_proto.py")
    ok = subprocess.run([_python(), script, "--check"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    proto = box / "proto" / "table.proto"
    text = proto.read_text()
    assert "message ExternalFile {" in text
    proto.write_text(text.replace("message ExternalFile {", "message ExternalFile {\n  uint64 added_by_test = 99;", 1))
    stale = subprocess.run([_python(), script, "--check"], capture_output=True, text=True, timeout=120)
    assert stale.returncode == 1
    assert "table_pb2" in stale.stderr


def test_gen_proto_check_detects_an_orphaned_module(tmp_path: Path) -> None:
    """A generated module whose .proto was deleted is stale as well."""
    box = _gen_proto_sandbox(tmp_path)
    (box / "proto" / "rowids.proto").unlink()
    res = subprocess.run(
        [_python(), str(box / "scripts" / "gen_proto.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 1
    assert "rowids_pb2" in res.stderr


# --- a minimal, independent wire-format walker ----------------------------------------------
VARINT, I64, LEN, I32 = 0, 1, 2, 5


def enc_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def dec_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def key(field: int, wire_type: int) -> bytes:
    return enc_varint(field << 3 | wire_type)


def len_field(field: int, payload: bytes) -> bytes:
    return key(field, LEN) + enc_varint(len(payload)) + payload


def walk(buf: bytes) -> list[tuple[int, int, bytes, bytes]]:
    """Top-level fields of a message: (number, wire type, whole encoding, LEN payload or value bytes)."""
    out = []
    pos = 0
    while pos < len(buf):
        start = pos
        k, pos = dec_varint(buf, pos)
        num, wt = k >> 3, k & 7
        if wt == VARINT:
            _, pos = dec_varint(buf, pos)
            value = buf[start:pos]
        elif wt == I64:
            pos += 8
            value = buf[pos - 8 : pos]
        elif wt == I32:
            pos += 4
            value = buf[pos - 4 : pos]
        elif wt == LEN:
            n, pos = dec_varint(buf, pos)
            pos += n
            value = buf[pos - n : pos]
        else:  # pragma: no cover - groups are not used by Lance
            raise AssertionError(f"unexpected wire type {wt}")
        assert pos <= len(buf), "walker ran past the message"
        out.append((num, wt, buf[start:pos], value))
    return out


def splice_first(buf: bytes, field: int, change: Callable[[bytes], bytes]) -> bytes:
    """Replace the payload of the first LEN field ``field`` by ``change(payload)``."""
    out = bytearray()
    done = False
    for num, wt, whole, payload in walk(buf):
        if not done and num == field and wt == LEN:
            out += len_field(field, change(payload))
            done = True
        else:
            out += whole
    assert done, f"field {field} not found"
    return bytes(out)


def first_payload(buf: bytes, field: int) -> bytes:
    return next(p for n, wt, _, p in walk(buf) if n == field and wt == LEN)


# Unknown fields "a newer Lance" wrote, one set per message level (tags unused by our protos).
UNKNOWN_MANIFEST = key(1000, VARINT) + enc_varint(123_456_789) + len_field(1001, b"from a newer lance")
UNKNOWN_FRAGMENT = (
    len_field(900, len_field(1, b"overlay-ish") + key(2, VARINT) + enc_varint(7))
    + key(901, I64)
    + (2**60 + 5).to_bytes(8, "little")
)
UNKNOWN_DATA_FILE = key(800, I32) + (0xDEADBEEF).to_bytes(4, "little") + key(801, VARINT) + enc_varint(2**40)
UNKNOWN_FIELD = len_field(700, b"\x08\x01\x10\x02") + key(701, VARINT) + enc_varint(1)

UNKNOWN_TAGS = {"manifest": [1000, 1001], "fragment": [900, 901], "data_file": [800, 801], "field": [700, 701]}


def _has_raw(msg_bytes: bytes, unknown: bytes) -> bool:
    """Every field of ``unknown`` appears verbatim, as a top-level field of ``msg_bytes``."""
    fields = {whole for _, _, whole, _ in walk(msg_bytes)}
    return all(whole in fields for _, _, whole, _ in walk(unknown))


def _newer_lance_manifest(raw_manifest: bytes) -> bytes:
    """The manifest message with unknown fields added at four levels."""

    def data_file(payload: bytes) -> bytes:
        return payload + UNKNOWN_DATA_FILE

    def fragment(payload: bytes) -> bytes:
        return splice_first(payload, 2, data_file) + UNKNOWN_FRAGMENT

    out = splice_first(raw_manifest, 2, fragment)  # first DataFragment (and its first DataFile)
    out = splice_first(out, 1, lambda p: p + UNKNOWN_FIELD)  # first schema Field
    return out + UNKNOWN_MANIFEST


def _assert_unknowns_in_message_bytes(manifest_bytes: bytes) -> None:
    assert _has_raw(manifest_bytes, UNKNOWN_MANIFEST)
    frag = first_payload(manifest_bytes, 2)
    assert _has_raw(frag, UNKNOWN_FRAGMENT)
    assert _has_raw(first_payload(frag, 2), UNKNOWN_DATA_FILE)
    assert _has_raw(first_payload(manifest_bytes, 1), UNKNOWN_FIELD)


def _assert_unknowns_on_messages(m: mf.Manifest) -> None:
    assert unknown_field_numbers(m) == UNKNOWN_TAGS["manifest"]
    assert unknown_field_numbers(m.fragments[0]) == UNKNOWN_TAGS["fragment"]
    assert unknown_field_numbers(m.fragments[0].files[0]) == UNKNOWN_TAGS["data_file"]
    assert unknown_field_numbers(m.fields[0]) == UNKNOWN_TAGS["field"]


@pytest.fixture(params=["2.1", "legacy"])
def real_manifest_file(request: pytest.FixtureRequest, dataset_cache: Callable[[str, str], Path]) -> bytes:
    path = dataset_cache("deletes_arrow", request.param)
    ds = Dataset.open(str(path))
    return ds.storage.read(ds.location.rel_path)


def test_walker_agrees_with_protobuf_on_real_manifest(real_manifest_file: bytes) -> None:
    """Sanity check of the test's own walker: re-emitting every field reproduces the bytes."""
    f = mf.parse_manifest_file(real_manifest_file)
    raw = f.manifest.SerializeToString()
    assert b"".join(w for _, _, w, _ in walk(raw)) == raw
    assert len([1 for n, *_ in walk(raw) if n == 2]) == len(f.manifest.fragments)
    assert unknown_field_numbers(f.manifest) == []  # the real manifest has nothing unknown to us


def test_unknown_fields_survive_read_modify_write(real_manifest_file: bytes) -> None:
    original = mf.parse_manifest_file(real_manifest_file)
    newer = _newer_lance_manifest(original.manifest.SerializeToString())

    m = parse(mf.Manifest, newer, path=None, what="manifest")
    _assert_unknowns_on_messages(m)
    # the known content is unaffected by the unknown fields
    assert m.fragments[0].id == original.manifest.fragments[0].id
    assert m.fragments[0].files[0].path == original.manifest.fragments[0].files[0].path
    assert [f.name for f in m.fields] == [f.name for f in original.manifest.fields]

    # modify known fields at every level that carries unknowns
    m.version += 1
    m.fragments[0].physical_rows += 11
    m.fragments[0].files[0].file_size_bytes = 424242
    m.fields[0].name = "renamed"
    out = m.SerializeToString()
    _assert_unknowns_in_message_bytes(out)

    again = parse(mf.Manifest, out, path=None, what="manifest")
    _assert_unknowns_on_messages(again)
    assert again.version == original.manifest.version + 1
    assert again.fragments[0].physical_rows == original.manifest.fragments[0].physical_rows + 11
    assert again.fragments[0].files[0].file_size_bytes == 424242
    assert again.fields[0].name == "renamed"


def test_unknown_fields_survive_manifest_file_round_trip(real_manifest_file: bytes) -> None:
    original = mf.parse_manifest_file(real_manifest_file)
    m = parse(mf.Manifest, _newer_lance_manifest(original.manifest.SerializeToString()), path=None, what="manifest")
    m.fragments[0].files[0].file_size_bytes = 99

    data = mf.build_manifest_file(m, original.transaction, original.index_section)
    back = mf.parse_manifest_file(data)
    _assert_unknowns_on_messages(back.manifest)
    assert back.manifest.fragments[0].files[0].file_size_bytes == 99
    assert back.transaction == original.transaction
    assert back.index_section == original.index_section
    # the manifest message inside the file still carries the raw unknown bytes
    (pos,) = struct.unpack_from("<q", data, len(data) - mf.TRAILER_SIZE)
    manifest_bytes = data[pos + 4 : len(data) - mf.TRAILER_SIZE]
    _assert_unknowns_in_message_bytes(manifest_bytes)
    # and a second build of the parsed result is stable
    assert mf.build_manifest_file(back.manifest, back.transaction, back.index_section) == data


def test_unknown_fields_in_transaction_and_index_metadata_survive(dataset_cache: Callable[[str, str], Path]) -> None:
    """Sections beside the manifest: a future operation tag and a future IndexMetadata tag are kept."""
    ds = Dataset.open(str(dataset_cache("scalar_index", "2.2")))
    f = ds.file
    assert f.transaction is not None and f.index_section is not None
    future_op = len_field(150, len_field(1, b"some future operation"))
    txn = parse(mf.Transaction, f.transaction.SerializeToString() + future_op, path=None, what="transaction")
    idx_raw = splice_first(f.index_section.SerializeToString(), 1, lambda p: p + key(600, VARINT) + enc_varint(5))
    idx = parse(mf.IndexSection, idx_raw, path=None, what="index section")
    assert unknown_field_numbers(txn) == [150]
    assert unknown_field_numbers(idx.indices[0]) == [600]

    data = mf.build_manifest_file(f.manifest, txn, idx)
    back = mf.parse_manifest_file(data)
    assert back.transaction is not None and back.index_section is not None
    assert unknown_field_numbers(back.transaction) == [150]
    assert unknown_field_numbers(back.index_section.indices[0]) == [600]
    assert _has_raw(back.transaction.SerializeToString(), future_op)
