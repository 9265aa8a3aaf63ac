"""Hostile bytes: truncations, flips, slices, forged lengths — only our typed errors come out.

Complements the per-module fuzzing of the other tests/format/ modules (v2 tails, legacy files,
deletion files, row ids, roaring) with what was missing: transactions (and the
conflict checker that consumes them), manifest index sections and inline
transactions damaged *inside* a valid framing, forged length fields in every
format, the engine (planner, copier, commit) fed damaged files, and a campaign
under an address-space limit so a forged length cannot allocate gigabytes.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import struct
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lance_assets._proto import transaction_pb2
from lance_assets.engine.committing.commit import commit_compaction
from lance_assets.engine.copying.copy import execute_task
from lance_assets.engine.dataset import Dataset, list_versions
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.planning.plan import plan_compaction
from lance_assets.errors import CorruptFileError, LanceAssetsError
from lance_assets.format import manifest as mf
from lance_assets.format.deletion import DeletionFileType
from lance_assets.io import Storage
from tests.support import fuzzing, writers

pytestmark = pytest.mark.timeout(300)
FIXTURE_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[bytes]]:
    return fuzzing.build_samples(tmp_path_factory.mktemp("fuzz-samples"))


def test_every_sample_parses(samples: dict[str, list[bytes]]) -> None:
    for kind, values in samples.items():
        for data in values:
            assert fuzzing.run_case(kind, data) == "ok", kind
    assert any(mf.parse_manifest_file(m).index_section for m in samples["manifest"])
    ops = {transaction_pb2.Transaction.FromString(t).WhichOneof("operation") for t in samples["transaction"]}
    assert {"append", "delete", "create_index"} <= ops | {"rewrite", "update", "merge"}


@settings(max_examples=400, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    rnd=st.randoms(use_true_random=False), kind=st.sampled_from(sorted(fuzzing.PARSERS)), how=st.sampled_from(fuzzing.MUTATIONS)
)
def test_mutations_give_only_typed_errors(samples: dict[str, list[bytes]], rnd: random.Random, kind: str, how: str) -> None:
    _, data = fuzzing.mutate(rnd, rnd.choice(samples[kind]), kind, how)
    event(f"{kind}: {fuzzing.run_case(kind, data)}")


def test_framing_helper_round_trips(samples: dict[str, list[bytes]]) -> None:
    for data in samples["manifest"]:
        again = mf.parse_manifest_file(fuzzing.frame_manifest(fuzzing.manifest_sections(data)))
        orig = mf.parse_manifest_file(data)
        assert again.transaction == orig.transaction and again.index_section == orig.index_section
        assert again.manifest.fragments == orig.manifest.fragments


@settings(max_examples=400, deadline=None, suppress_health_check=FIXTURE_OK)
@given(rnd=st.randoms(use_true_random=False))
def test_damage_inside_index_section_and_inline_transaction(samples: dict[str, list[bytes]], rnd: random.Random) -> None:
    """The framing stays valid, so the damaged payload reaches the index-section / transaction parsers."""
    with_sections = [m for m in samples["manifest"] if len(fuzzing.manifest_sections(m)) == 3]
    assert with_sections
    where, data = fuzzing.mutate_manifest_section(rnd, rnd.choice(with_sections))
    event(f"{where.split(':')[0]}: {fuzzing.run_case('manifest', data)}")


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=600), st.sampled_from(["transaction", "manifest", "row_ids", "row_versions", "bitmap", "deletion_arrow"])
)
def test_random_bytes(data: bytes, kind: str) -> None:
    fuzzing.run_case(kind, data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.booleans())
def test_conflict_checker_on_garbage_bitmaps(bitmap: bytes, stable: bool) -> None:
    """A concurrent CreateIndex whose fragment bitmap is garbage: a typed error or a decision, nothing else."""
    txn = transaction_pb2.Transaction(read_version=1, uuid="x")
    idx = txn.create_index.new_indices.add(name="i", fragment_bitmap=bitmap)
    idx.fields.append(0)
    try:
        fuzzing._conflicts(txn)
    except CorruptFileError:
        event("corrupt")


# --- forged length fields: refused quickly, without allocating what they claim -----------------
def _forge_manifest(data: bytes, what: str, value: int) -> bytes:
    blob = bytearray(data)
    (pos,) = struct.unpack_from("<q", data, len(data) - mf.TRAILER_SIZE)
    parsed = mf.parse_manifest_file(data)
    at = {"manifest": pos, "index": parsed.manifest.index_section, "transaction": parsed.manifest.transaction_section}[what]
    if what == "trailer":
        struct.pack_into("<q", blob, len(data) - mf.TRAILER_SIZE, value)
    else:
        struct.pack_into("<I", blob, at, value)
    return bytes(blob)


@pytest.mark.parametrize("what", ["manifest", "index", "transaction"])
@pytest.mark.parametrize("value", [0x7FFFFFFF, 0xFFFFFFFF, 0xFFFFFFF0])
def test_forged_manifest_section_lengths(samples: dict[str, list[bytes]], what: str, value: int) -> None:
    data = next(m for m in samples["manifest"] if len(fuzzing.manifest_sections(m)) == 3)
    assert fuzzing.run_case("manifest", _forge_manifest(data, what, value), budget=0.5).startswith("typed:")


@pytest.mark.parametrize("value", [-1, -(2**63), 2**63 - 1, 2**40])
def test_forged_manifest_trailer_position(samples: dict[str, list[bytes]], value: int) -> None:
    data = bytearray(samples["manifest"][0])
    struct.pack_into("<q", data, len(data) - mf.TRAILER_SIZE, value)
    assert fuzzing.run_case("manifest", bytes(data), budget=0.5).startswith("typed:")


def _v2_forgeries(data: bytes) -> list[bytes]:
    names = ["cm", "cmo", "gbo", "ngb", "ncol", "major", "minor"]
    values = dict(zip(names, struct.unpack("<QQQIIHH", data[-40:-4]), strict=True))
    out = []
    for change in ({"ncol": 2**32 - 1}, {"ngb": 2**32 - 1}, {"cm": 0, "cmo": 0}, {"cmo": 2**63}, {"gbo": 2**64 - 1}):
        v = dict(values, **change)
        out.append(data[:-40] + struct.pack("<QQQIIHH", *(v[n] for n in names)) + data[-4:])
    # the CMO entry of column 0 and the GBO entry of GB0 claim enormous sizes
    for table in ("cmo", "gbo"):
        blob = bytearray(data)
        struct.pack_into("<QQ", blob, values[table], values["cm"] if table == "cmo" else 0, 2**62)
        out.append(bytes(blob))
    return out


def test_forged_lengths_in_data_deletion_and_row_id_files(samples: dict[str, list[bytes]]) -> None:
    cases: list[tuple[str, bytes]] = [("v2_file", b) for b in _v2_forgeries(max(samples["v2_file"], key=len))]
    legacy_file = samples["legacy_file"][0]
    for value in (2**63 - 1, len(legacy_file) - 17, 0):
        blob = bytearray(legacy_file)
        struct.pack_into("<q", blob, len(blob) - 16, value)  # metadata position
        cases.append(("legacy_file", bytes(blob)))
    arrow = samples["deletion_arrow"][0]
    for value in (0x7FFFFFFF, -1, len(arrow)):
        blob = bytearray(arrow)
        struct.pack_into("<i", blob, len(blob) - 10, value)  # Arrow IPC file footer length
        cases.append(("deletion_arrow", bytes(blob)))
    bitmap = samples["deletion_bitmap"][0]
    cases.append(("deletion_bitmap", bitmap[:4] + struct.pack("<I", 2**31) + bitmap[8:]))  # container count
    cases.append(("treemap", struct.pack("<Q", 2**63) + samples["treemap"][0][8:]))  # bitmap count
    # a packed u16 array claiming more bytes than the message holds
    cases.append(("row_ids", bytes([0x0A, 0x10, 0x22, 0x0E, 0x0A, 0x0C, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F])))
    for kind, data in cases:
        outcome = fuzzing.run_case(kind, data, budget=0.5)
        assert outcome.startswith("typed:"), (kind, outcome)


def test_campaign_under_an_address_space_limit(samples: dict[str, list[bytes]], tmp_path: Path) -> None:
    """A forged length that made any parser allocate ~what it claims would hit the limit (MemoryError = bug)."""
    pytest.importorskip("resource")
    blob = tmp_path / "samples.pickle"
    blob.write_bytes(pickle.dumps(samples))
    code = f"""
import json, pickle, resource, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from tests.support import fuzzing
samples = pickle.loads(open({str(blob)!r}, "rb").read())
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
limit = vm + 512 * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
print(json.dumps(fuzzing.campaign(samples, 3000, 11)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["bugs"] == []
    assert sum(sum(v.values()) for v in report["stats"].values()) == 3000


# --- the engine fed damaged files ---------------------------------------------------------------
@pytest.fixture(scope="module")
def memory_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, bytes]]:
    """A small multi-fragment dataset copied into memory:// (fast to damage and restore)."""
    local = tmp_path_factory.mktemp("fuzz-engine") / "ds.lance"
    writers.build(local, [30, 40, 50, 60])
    files = {str(p.relative_to(local)): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    root = "/fuzz-engine/ds.lance"
    fs = fsspec.filesystem("memory")
    for rel, data in files.items():
        fs.pipe_file(f"{root}/{rel}", data)
    yield f"memory://{root}", files
    fs.rm(root, recursive=True)


def _with_damaged(uri: str, rel: str, data: bytes, action) -> str:  # type: ignore[no-untyped-def]
    fs = fsspec.filesystem("memory")
    path = f"{uri.removeprefix('memory://')}/{rel}"
    original = fs.cat_file(path)
    fs.pipe_file(path, data)
    try:
        action()
        return "ok"
    except LanceAssetsError as exc:
        return f"typed:{type(exc).__name__}"
    finally:
        fs.pipe_file(path, original)


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURE_OK)
@given(rnd=st.randoms(use_true_random=False))
def test_planner_on_a_damaged_latest_manifest(memory_dataset: tuple[str, dict[str, bytes]], rnd: random.Random) -> None:
    uri, files = memory_dataset
    rel = Dataset.open(uri).location.rel_path
    if rnd.random() < 0.6:
        _, data = fuzzing.mutate_manifest_section(rnd, files[rel])
    else:
        _, data = fuzzing.mutate(rnd, files[rel], "manifest")
    event(
        _with_damaged(
            uri, rel, data, lambda: plan_compaction(Dataset.open(Storage(uri)), CompactionOptions(target_rows_per_fragment=1000))
        )
    )


@settings(max_examples=80, deadline=None, suppress_health_check=FIXTURE_OK)
@given(rnd=st.randoms(use_true_random=False))
def test_copier_on_a_damaged_data_file(memory_dataset: tuple[str, dict[str, bytes]], rnd: random.Random) -> None:
    uri, files = memory_dataset
    storage = Storage(uri)
    plan = plan_compaction(Dataset.open(storage), CompactionOptions(target_rows_per_fragment=1000))
    frag = Dataset.open(storage).fragments[rnd.randrange(4)]
    rel = f"data/{frag.files[0].path}"
    _, data = fuzzing.mutate(rnd, files[rel], "v2_file")
    written: list[str] = []

    def run() -> None:
        for task in plan.tasks:
            written.extend(execute_task(storage, plan, task).files_written)

    event(_with_damaged(uri, rel, data, run))
    for p in written:
        storage.delete(p, missing_ok=True)
    leftovers = {e.name for e in storage.list("data")} - {p.removeprefix("data/") for p in files if p.startswith("data/")}
    assert leftovers == set()  # a task that failed removed its partial output


def test_commit_over_a_corrupt_intermediate_version(tmp_path: Path) -> None:
    """A version committed after our read whose inline transaction is garbage: refuse, remove our files."""
    uri = tmp_path / "ds.lance"
    writers.build(uri, [10] * 4)
    storage = Storage(str(uri))
    plan = plan_compaction(Dataset.open(storage), CompactionOptions(target_rows_per_fragment=1000))
    results = [execute_task(storage, plan, t) for t in plan.tasks]
    writers.build(uri, [5], start=100)
    latest = storage.path(list_versions(storage)[-1].rel_path)
    sections = fuzzing.manifest_sections(Path(latest).read_bytes())
    sections["transaction"] = b"\xff" * len(sections["transaction"])
    Path(latest).write_bytes(fuzzing.frame_manifest(sections))
    before = {
        p: Path(p).read_bytes()
        for p in map(str, uri.rglob("*"))
        if os.path.isfile(p) and p not in {storage.path(r) for r in results[0].files_written}
    }
    with pytest.raises(CorruptFileError):
        commit_compaction(storage, plan, results)
    after = {p: Path(p).read_bytes() for p in map(str, uri.rglob("*")) if os.path.isfile(p)}
    assert after == before


def test_deletion_file_types_cover_both_kinds(samples: dict[str, list[bytes]]) -> None:
    assert samples["deletion_arrow"] and samples["deletion_bitmap"]
    assert DeletionFileType.BITMAP != DeletionFileType.ARROW_ARRAY
