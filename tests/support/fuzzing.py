"""Hostile bytes for every parser: samples written by pylance, mutations, and the parsers' full consumers.

Used by tests/format/test_fuzz_parsers.py (hypothesis picks the mutations) and by
scripts/stress.py (a seeded campaign under an address-space limit). A case
passes when the parser returns or raises a ``LanceAssetsError``; anything else
(IndexError, MemoryError, struct.error, a hang) is a bug.
"""

from __future__ import annotations

import random
import struct
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from lance_assets._proto import transaction_pb2
from lance_assets.engine.committing import commit as commit_mod
from lance_assets.errors import LanceAssetsError
from lance_assets.format import legacy, v2file, v2safety
from lance_assets.format import manifest as mf
from lance_assets.format.deletion import DeletionFileType, decode_deletion_file
from lance_assets.format.protobuf import parse
from lance_assets.format.roaring import decode_bitmap, decode_treemap
from lance_assets.format.rowids import decode_row_ids, decode_row_versions

# ---------------------------------------------------------------------------------- samples


def build_samples(root: Path) -> dict[str, list[bytes]]:
    """Write small datasets with pylance and collect real bytes of every kind we parse."""
    import lance
    import numpy as np
    import pyarrow as pa

    warnings.simplefilter("ignore")

    def table(start: int, n: int) -> pa.Table:
        ids = np.arange(start, start + n, dtype=np.int64)
        return pa.table({"id": ids, "s": pa.array([f"s{i}" for i in ids]), "l": pa.array([[int(i)] * (int(i) % 3) for i in ids])})

    out: dict[str, list[bytes]] = {k: [] for k in PARSERS}
    # stable row ids + index + deletes: index sections, inline row ids and version sequences
    a = root / "stable.lance"
    for i in range(3):
        lance.write_dataset(
            table(i * 100, 100), str(a), mode="append" if i else "create", enable_stable_row_ids=True, data_storage_version="2.1"
        )
    ds = lance.dataset(str(a))
    ds.create_scalar_index("id", "BTREE")
    ds.delete("id IN (3, 5, 150)")
    ds.update({"s": "'x'"}, where="id = 7")
    # plain dataset: bitmap deletion file, pylance compaction (rewrite), add_columns (merge)
    b = root / "plain.lance"
    lance.write_dataset(table(0, 7000), str(b), data_storage_version="2.2")
    lance.write_dataset(table(7000, 50), str(b), mode="append")
    ds = lance.dataset(str(b))
    ds.delete("id % 7 != 0 AND id < 7000")
    ds.optimize.compact_files(target_rows_per_fragment=100_000)
    lance.dataset(str(b)).add_columns({"d": "id * 2"})
    c = root / "v20.lance"
    lance.write_dataset(table(0, 200), str(c), data_storage_version="2.0")
    d = root / "legacy.lance"
    lance.write_dataset(table(0, 200), str(d), data_storage_version="legacy")

    for ds_root in (a, b, c, d):
        for p in sorted((ds_root / "_versions").glob("*.manifest")):
            raw = p.read_bytes()
            out["manifest"].append(raw)
            parsed = mf.parse_manifest_file(raw)
            for frag in parsed.manifest.fragments:
                if frag.inline_row_ids:
                    out["row_ids"].append(frag.inline_row_ids)
                for name in ("inline_created_at_versions", "inline_last_updated_at_versions"):
                    if frag.HasField(name):
                        out["row_versions"].append(getattr(frag, name))
            if parsed.index_section is not None:
                out["bitmap"] += [i.fragment_bitmap for i in parsed.index_section.indices if i.fragment_bitmap]
        out["transaction"] += [p.read_bytes() for p in sorted((ds_root / "_transactions").glob("*.txn"))]
        for p in sorted((ds_root / "_deletions").glob("*")):
            out["deletion_bitmap" if p.suffix == ".bin" else "deletion_arrow"].append(p.read_bytes())
        for p in sorted((ds_root / "data").glob("*.lance"))[:3]:
            out["legacy_file" if ds_root == d else "v2_file"].append(p.read_bytes())
    from lance_assets.format.roaring import encode_treemap

    out["treemap"] = [encode_treemap([1, 2, 3, (5 << 32) | 7, (5 << 32) | 9]), encode_treemap(range(0, 100_000, 3))]
    for kind, values in out.items():
        # keep the samples small and varied: the shortest and the longest few of each kind
        values = sorted(set(values), key=len)
        if kind not in ("transaction",):  # every kind of transaction stays: the conflict checker branches on it
            values = values[:3] + values[-2:] if len(values) > 5 else values
        out[kind] = values
        assert out[kind], f"no sample of {kind}"
    return out


# ---------------------------------------------------------------------------------- parsers
def _manifest(data: bytes) -> None:
    parsed = mf.parse_manifest_file(data, path="fuzz.manifest")
    m = parsed.manifest
    mf.check_feature_flags(m, path="fuzz", for_write=True)
    mf.storage_version(m, path="fuzz")
    mf.compute_feature_flags(m)
    for frag in m.fragments:
        if frag.inline_row_ids:
            decode_row_ids(frag.inline_row_ids, path="fuzz")
        for name in ("inline_created_at_versions", "inline_last_updated_at_versions"):
            if frag.HasField(name):
                decode_row_versions(getattr(frag, name), path="fuzz")
        for df in frag.files:
            mf.data_file_version(df)
    if parsed.index_section is not None:
        for idx in parsed.index_section.indices:
            if idx.fragment_bitmap:
                decode_bitmap(idx.fragment_bitmap, path="fuzz")
    if parsed.transaction is not None:
        _conflicts(parsed.transaction)
    mf.parse_manifest_file(mf.build_manifest_file(m, parsed.transaction, parsed.index_section))


def _conflicts(txn: transaction_pb2.Transaction) -> None:
    for stable in (False, True):
        reason = commit_mod._conflict(txn, 9, set(range(8)), stable)
        assert reason is None or isinstance(reason, str)


def _transaction(data: bytes) -> None:
    _conflicts(parse(transaction_pb2.Transaction, data, path="fuzz.txn", what="transaction"))


def _tail_loop(data: bytes, parse_tail: Callable, first: int) -> object:
    size = len(data)
    offset = max(0, size - first)
    for _ in range(8):
        result = parse_tail(data[offset:], offset, size, path="fuzz.lance")
        if not isinstance(result, (v2file.NeedMore, legacy.NeedMore)):
            return result
        assert result.offset < offset, "parser asked for bytes it already has"
        offset = result.offset
    raise AssertionError("parser kept asking for more bytes")


def _v2_file(data: bytes) -> None:
    for first in (40, v2file.DEFAULT_TAIL_BYTES):
        meta = _tail_loop(data, v2file.parse_tail, first)
        v2safety.inspect_copy_safety(meta)


def _legacy_file(data: bytes) -> None:
    for first in (16, 4096):
        meta = _tail_loop(data, legacy.parse_tail, first)
        legacy.field_layouts(meta)


PARSERS: dict[str, Callable[[bytes], None]] = {
    "manifest": _manifest,
    "transaction": _transaction,
    "v2_file": _v2_file,
    "legacy_file": _legacy_file,
    "deletion_arrow": lambda d: decode_deletion_file(d, DeletionFileType.ARROW_ARRAY, physical_rows=10_000, path="fuzz"),
    "deletion_bitmap": lambda d: decode_deletion_file(d, DeletionFileType.BITMAP, physical_rows=10_000, path="fuzz"),
    "row_ids": lambda d: decode_row_ids(d, path="fuzz"),
    "row_versions": lambda d: decode_row_versions(d, path="fuzz"),
    "bitmap": lambda d: decode_bitmap(d, path="fuzz"),
    "treemap": lambda d: decode_treemap(d, path="fuzz"),
}

# Where the interesting bytes are: metadata sits at the end of data files, so mutations
# of those kinds are aimed at the last KiB most of the time.
TAIL_HEAVY = {"v2_file", "legacy_file"}

# ---------------------------------------------------------------------------------- mutations
MUTATIONS = ("flip", "truncate", "delete", "insert", "forge_u32", "forge_u64", "splice")
FORGED = (0, 1, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 2**63 - 1, 2**64 - 1)


def mutate(rnd: random.Random, data: bytes, kind: str = "", how: str | None = None) -> tuple[str, bytes]:
    """One random mutation: byte flips, truncation, a deleted or inserted slice, forged lengths."""
    how = how or rnd.choice(MUTATIONS)
    blob = bytearray(data)
    n = len(blob)

    def pos() -> int:
        if kind in TAIL_HEAVY and n > 1024 and rnd.random() < 0.8:
            return rnd.randrange(n - 1024, n)
        return rnd.randrange(n) if n else 0

    if not n:
        return how, bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 32)))
    if how == "flip":
        for _ in range(rnd.randint(1, 6)):
            blob[pos()] ^= rnd.randint(1, 255)
    elif how == "truncate":
        blob = blob[: rnd.randrange(n)] if rnd.random() < 0.5 else blob[rnd.randrange(1, n + 1) :]
    elif how == "delete":
        at = pos()
        del blob[at : at + rnd.randint(1, 64)]
    elif how == "insert":
        at = pos()
        blob[at:at] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 64)))
    elif how in ("forge_u32", "forge_u64"):
        width = 4 if how == "forge_u32" else 8
        if n >= width:
            at = min(pos(), n - width)
            struct.pack_into("<I" if width == 4 else "<Q", blob, at, rnd.choice(FORGED) % (1 << (8 * width)))
    else:  # splice: a copy of one region over another (valid-looking structure in the wrong place)
        a, b = pos(), pos()
        length = rnd.randint(1, 128)
        chunk = bytes(blob[a : a + length])
        blob[b : b + len(chunk)] = chunk
    return how, bytes(blob)


def manifest_sections(data: bytes) -> dict[str, bytes]:
    """The raw payloads of a manifest file: index section, inline transaction, manifest message."""
    parsed = mf.parse_manifest_file(data)
    (pos,) = struct.unpack_from("<q", data, len(data) - mf.TRAILER_SIZE)

    def payload(at: int) -> bytes:
        (length,) = struct.unpack_from("<I", data, at)
        return data[at + 4 : at + 4 + length]

    out = {"manifest": payload(pos)}
    m = parsed.manifest
    if m.HasField("index_section"):
        out["index"] = payload(m.index_section)
    if m.HasField("transaction_section"):
        out["transaction"] = payload(m.transaction_section)
    return out


def frame_manifest(sections: dict[str, bytes]) -> bytes:
    """Re-frame (possibly damaged) payloads as a manifest file whose lengths and positions are right.

    The positions live inside the manifest message; when that message is itself
    the damaged part it is framed as is (its positions may then be wrong too).
    """
    from lance_assets._proto import table_pb2

    out = bytearray()
    positions = {}
    for name in ("index", "transaction"):
        if name in sections:
            positions[name] = len(out)
            out += struct.pack("<I", len(sections[name])) + sections[name]
    message = sections["manifest"]
    try:
        m = table_pb2.Manifest()
        m.ParseFromString(message)
        if "index" in positions:
            m.index_section = positions["index"]
        if "transaction" in positions:
            m.transaction_section = positions["transaction"]
        message = m.SerializeToString()
    except Exception:
        pass
    manifest_pos = len(out)
    out += struct.pack("<I", len(message)) + message
    out += struct.pack("<qHH", manifest_pos, 0, 2) + mf.MAGIC
    return bytes(out)


def mutate_manifest_section(rnd: random.Random, data: bytes) -> tuple[str, bytes]:
    """Damage one section's payload but keep the file framing valid, so the damage reaches the section parser."""
    sections = manifest_sections(data)
    name = rnd.choice(sorted(sections))
    how, sections[name] = mutate(rnd, sections[name])
    return f"{name}:{how}", frame_manifest(sections)


def run_case(kind: str, data: bytes, budget: float = 2.0) -> str:
    """Feed ``data`` to the parser of ``kind``: 'ok', 'typed:<Error>', or raise (a bug)."""
    t0 = time.monotonic()
    try:
        PARSERS[kind](data)
        outcome = "ok"
    except LanceAssetsError as exc:
        assert str(exc), "typed error without a message"
        outcome = f"typed:{type(exc).__name__}"
    elapsed = time.monotonic() - t0
    assert elapsed < budget, f"{kind}: {elapsed:.2f}s for {len(data)} bytes (hang?)"
    return outcome


def campaign(samples: dict[str, list[bytes]], cases: int, seed: int) -> dict[str, object]:
    """``cases`` seeded random mutations spread over every parser; bugs are collected, not raised."""
    rnd = random.Random(seed)
    kinds = sorted(samples)
    stats: dict[str, dict[str, int]] = {k: {} for k in kinds}
    bugs: list[str] = []
    for i in range(cases):
        kind = kinds[i % len(kinds)]
        sample = rnd.choice(samples[kind])
        if kind == "manifest" and rnd.random() < 0.7:
            how, data = mutate_manifest_section(rnd, sample)
        else:
            how, data = mutate(rnd, sample, kind)
        try:
            outcome = run_case(kind, data)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            outcome = "BUG"
            bugs.append(f"{kind}/{how} case {i} (seed {seed}): {type(exc).__name__}: {exc}"[:400])
        stats[kind][outcome] = stats[kind].get(outcome, 0) + 1
    return {"cases": cases, "seed": seed, "stats": stats, "bugs": bugs}
