"""``Dataset.open`` sees exactly what pylance sees, for every shape, storage version and version."""

from __future__ import annotations

import datetime
import random
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lance
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lance_assets.engine.dataset import HINT_FILE, Dataset, list_versions
from lance_assets.engine.maintenance.inspect import inspect_dataset
from lance_assets.errors import VersionNotFoundError
from lance_assets.format import manifest as mf
from tests.support import factory

ALL = [(shape, v) for shape in factory.SHAPES for v in factory.STORAGE_VERSIONS if (shape, v) not in factory.UNSUPPORTED]
ALL_IDS = [f"{s}-{v}" for s, v in ALL]


# --- what pylance says ----------------------------------------------------------------------
def pylance_schema(ds: lance.LanceDataset) -> list[tuple[int, int, str]]:
    """(id, parent id, name) of every field, pre-order, as pylance's Lance schema has them."""
    out: list[tuple[int, int, str]] = []

    def walk(fields: list[Any], parent: int) -> None:
        for f in fields:
            out.append((f.id(), parent, f.name()))
            walk(f.children(), f.id())

    walk(ds.lance_schema.fields(), -1)
    return out


def our_schema(d: Dataset) -> list[tuple[int, int, str]]:
    return [(f.id, f.parent_id, f.name) for f in d.manifest.fields]


def pylance_storage_version(ds: lance.LanceDataset) -> str:
    v = ds.data_storage_version
    return "legacy" if v in ("0.1", "legacy") else v


def assert_fragments_agree(d: Dataset, ds: lance.LanceDataset) -> None:
    theirs = ds.get_fragments()
    ours = d.fragments
    assert [f.id for f in ours] == [f.fragment_id for f in theirs]
    for mine, their in zip(ours, theirs):
        meta = their.metadata
        assert mine.physical_rows == meta.physical_rows, f"fragment {mine.id}"
        # data files: same order, paths, field mapping, versions and sizes
        got = [
            (df.path, list(df.fields), list(df.column_indices), df.file_major_version, df.file_minor_version, df.file_size_bytes)
            for df in mine.files
        ]
        want = [
            (df.path, list(df.fields), list(df.column_indices), df.file_major_version, df.file_minor_version, df.file_size_bytes)
            for df in meta.files
        ]
        assert got == want, f"fragment {mine.id}"
        for df in mine.files:
            on_disk = Path(d.uri) / d.data_file_path(df)
            assert on_disk.is_file()
            if df.file_size_bytes:
                assert on_disk.stat().st_size == df.file_size_bytes
        # deletions
        their_del = meta.deletion_file
        assert mine.HasField("deletion_file") == (their_del is not None), f"fragment {mine.id}"
        deleted = mine.deletion_file.num_deleted_rows if mine.HasField("deletion_file") else 0
        assert deleted == meta.num_deletions
        if their_del is not None:
            assert mine.deletion_file.read_version == their_del.read_version
            assert mine.deletion_file.id == their_del.id
            assert mine.deletion_file.num_deleted_rows == their_del.num_deleted_rows
            assert d.deletion_file_path(mine) == their_del.path(their.fragment_id)
            assert (Path(d.uri) / d.deletion_file_path(mine)).is_file()


# --- every shape x storage version ------------------------------------------------------------
@pytest.mark.parametrize(("shape", "version"), ALL, ids=ALL_IDS)
def test_reader_agrees_with_pylance(dataset_cache: Callable[[str, str], Path], shape: str, version: str) -> None:
    path = str(dataset_cache(shape, version))
    ds = lance.dataset(path)
    d = Dataset.open(path)

    assert d.version == ds.version
    assert mf.storage_version_name(d.storage_version) == pylance_storage_version(ds) == version
    assert d.stable_row_ids == ds.has_stable_row_ids
    assert our_schema(d) == pylance_schema(ds)
    assert_fragments_agree(d, ds)
    assert (
        sum(f.physical_rows for f in d.fragments) - sum(f.deletion_file.num_deleted_rows for f in d.fragments) == ds.count_rows()
    )
    if d.fragments:
        assert d.manifest.max_fragment_id >= max(f.id for f in d.fragments)

    # indices: names, uuids, fields and covered fragments
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        their_indices = ds.list_indices()
    assert len(d.indices) == len(their_indices) == len(ds.describe_indices())
    ours = inspect_dataset(d).indices
    assert all(i.fragment_ids is not None for i in ours), "an index fragment bitmap did not decode"
    field_names = {f.id: f.name for f in d.manifest.fields}  # pylance lists index fields by name
    assert sorted(
        (i.name, i.uuid, tuple(field_names[f] for f in i.fields), tuple(sorted(i.fragment_ids or []))) for i in ours
    ) == sorted(
        (i["name"], i["uuid"].replace("-", ""), tuple(i["fields"]), tuple(sorted(i["fragment_ids"]))) for i in their_indices
    )


@pytest.mark.parametrize(("shape", "version"), ALL, ids=ALL_IDS)
def test_every_older_version_agrees(dataset_cache: Callable[[str, str], Path], shape: str, version: str) -> None:
    path = str(dataset_cache(shape, version))
    latest = lance.dataset(path).version
    assert [loc.version for loc in list_versions(Dataset.open(path).storage)] == list(range(1, latest + 1))
    for k in range(1, latest + 1):
        d = Dataset.open(path, version=k)
        ds = lance.dataset(path, version=k)
        assert d.version == ds.version == k
        assert [f.id for f in d.fragments] == [f.fragment_id for f in ds.get_fragments()]
        assert [f.physical_rows for f in d.fragments] == [f.metadata.physical_rows for f in ds.get_fragments()]
        assert our_schema(d) == pylance_schema(ds)
    with pytest.raises(VersionNotFoundError):
        Dataset.open(path, version=latest + 1)
    with pytest.raises(VersionNotFoundError):
        Dataset.open(path, version=0)


def test_uri_forms_and_memory_filesystem(dataset_cache: Callable[[str, str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths, trailing slashes, file:// URLs and a non-local fsspec store all read the same."""
    import uuid

    import fsspec

    path = dataset_cache("deletes_arrow", "2.2")
    want = [(f.fragment_id, f.metadata.physical_rows, f.metadata.num_deletions) for f in lance.dataset(str(path)).get_fragments()]

    def seen(uri: str) -> list[tuple[int, int, int]]:
        d = Dataset.open(uri)
        assert d.version == 4
        return [
            (f.id, f.physical_rows, f.deletion_file.num_deleted_rows if f.HasField("deletion_file") else 0) for f in d.fragments
        ]

    monkeypatch.chdir(path.parent)
    for uri in (path.name, f"./{path.name}/", f"file://{path}", f"{path}/"):
        assert seen(uri) == want, uri

    mem = fsspec.filesystem("memory")
    root = f"/ds-{uuid.uuid4().hex}.lance"
    for file in path.rglob("*"):
        if file.is_file():
            mem.pipe_file(f"{root}/{file.relative_to(path).as_posix()}", file.read_bytes())
    try:
        assert seen(f"memory://{root}") == want
        report = inspect_dataset(f"memory://{root}")
        assert [f.bytes for f in report.fragments] == [
            sum(df.file_size_bytes for df in f.metadata.files) for f in lance.dataset(str(path)).get_fragments()
        ]
        mem.rm_file(f"{root}/{HINT_FILE}")
        assert Dataset.open(f"memory://{root}").version == 4
        assert Dataset.open(f"memory://{root}", version=2).version == 2
    finally:
        mem.rm(root, recursive=True)


# --- latest version discovery ---------------------------------------------------------------
HINTS: dict[str, Callable[[Path], None]] = {
    "deleted": lambda p: (p / HINT_FILE).unlink(),
    "stale": lambda p: (p / HINT_FILE).write_text('{"version":1}'),
    "ahead": lambda p: (p / HINT_FILE).write_text('{"version":99}'),
    "garbage": lambda p: (p / HINT_FILE).write_bytes(b"\xff\x00not json at all{{"),
    "empty": lambda p: (p / HINT_FILE).write_bytes(b""),
    "wrong_type": lambda p: (p / HINT_FILE).write_text('{"version":"4"}'),
    "list": lambda p: (p / HINT_FILE).write_text("[4]"),
    "negative": lambda p: (p / HINT_FILE).write_text('{"version":-3}'),
    "huge": lambda p: (p / HINT_FILE).write_text('{"version":18446744073709551615}'),
    "directory": lambda p: ((p / HINT_FILE).unlink(), (p / HINT_FILE).mkdir()),
}


@pytest.mark.parametrize("tamper", sorted(HINTS))
@pytest.mark.parametrize("shape", ["appends", "deletes_arrow"])
def test_latest_version_ignores_a_bad_hint(dataset_copy: Callable[[str, str], Path], shape: str, tamper: str) -> None:
    path = dataset_copy(shape, "2.1")
    expected = lance.dataset(str(path)).version
    assert (path / HINT_FILE).is_file(), "pylance 14 writes the hint file"
    HINTS[tamper](path)
    d = Dataset.open(str(path))
    assert d.version == expected == lance.dataset(str(path)).version
    assert [f.id for f in d.fragments] == [f.fragment_id for f in lance.dataset(str(path)).get_fragments()]


def test_stale_hint_pointing_at_a_cleaned_up_version(dataset_copy: Callable[[str, str], Path]) -> None:
    path = dataset_copy("appends", "2.2")
    first = path / "_versions" / mf.manifest_name(1, mf.NamingScheme.V2)
    first.unlink()
    (path / HINT_FILE).write_text('{"version":1}')
    assert Dataset.open(str(path)).version == 4
    with pytest.raises(VersionNotFoundError):
        Dataset.open(str(path), version=1)


def test_v1_names_with_bad_hints(tmp_path: Path) -> None:
    path = tmp_path / "v1.lance"
    factory.appends(path, "2.0", [5, 6, 7, 8], enable_v2_manifest_paths=False)
    for tamper in ("stale", "ahead", "garbage", "deleted"):
        HINTS[tamper](path)
        d = Dataset.open(str(path))
        assert d.version == 4 and d.location.scheme is mf.NamingScheme.V1
    # a later commit by pylance after our reads still lands where we look
    factory.write(factory.simple_table(100, 3), path, "2.0")
    assert Dataset.open(str(path)).version == 5 == lance.dataset(str(path)).version


def test_versions_listing_ignores_foreign_files(dataset_copy: Callable[[str, str], Path]) -> None:
    path = dataset_copy("appends", "2.1")
    for name in ("notes.txt", ".tmp_18446744073709551610.manifest", "18446744073709551610.manifest-1234abcd", "d5.manifest"):
        (path / "_versions" / name).write_bytes(b"junk")
    (path / HINT_FILE).unlink()
    assert Dataset.open(str(path)).version == 4
    assert [loc.version for loc in list_versions(Dataset.open(str(path)).storage)] == [1, 2, 3, 4]


# --- property test: random schemas and appends ------------------------------------------------
PRIMITIVES = [
    pa.int8(),
    pa.int16(),
    pa.int32(),
    pa.int64(),
    pa.uint8(),
    pa.uint32(),
    pa.float32(),
    pa.float64(),
    pa.bool_(),
    pa.string(),
    pa.large_string(),
    pa.binary(),
    pa.date32(),
]
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)


def _types(nested_lists: bool) -> st.SearchStrategy[pa.DataType]:
    leaf = st.sampled_from(PRIMITIVES)

    def compound(children: st.SearchStrategy[pa.DataType]) -> st.SearchStrategy[pa.DataType]:
        items = children if nested_lists else leaf
        structs = st.lists(st.tuples(NAMES, children, st.booleans()), min_size=1, max_size=3, unique_by=lambda t: t[0]).map(
            lambda fs: pa.struct([pa.field(n, t, nullable=nb) for n, t, nb in fs])
        )
        return st.one_of(items.map(pa.list_), structs)

    return st.recursive(leaf, compound, max_leaves=4)


def _legacy_ok(t: pa.DataType, in_list: bool = False) -> bool:
    """Legacy files take lists of primitives and structs of those; nothing nested inside lists."""
    if pa.types.is_list(t):
        return not in_list and not (pa.types.is_list(t.value_type) or pa.types.is_struct(t.value_type))
    if pa.types.is_struct(t):
        return not in_list and all(_legacy_ok(t.field(i).type) for i in range(t.num_fields))
    return True


@st.composite
def schemas(draw: st.DrawFn) -> tuple[str, pa.Schema]:
    version = draw(st.sampled_from(factory.STORAGE_VERSIONS))
    names = draw(st.lists(NAMES, min_size=1, max_size=6, unique=True))
    types = _types(nested_lists=version != "legacy")
    fields = []
    for n in names:
        t = draw(types.filter(_legacy_ok) if version == "legacy" else types)
        fields.append(pa.field(n, t, nullable=draw(st.booleans())))
    return version, pa.schema(fields)


def _value(t: pa.DataType, nullable: bool, rng: random.Random, struct_nulls: bool) -> Any:
    """A random value; legacy and 2.0 files cannot encode a null struct, so those get none."""
    if nullable and rng.random() < 0.2 and (struct_nulls or not pa.types.is_struct(t)):
        return None
    if pa.types.is_list(t):
        return [_value(t.value_type, True, rng, struct_nulls) for _ in range(rng.randint(0, 3))]
    if pa.types.is_struct(t):
        return {t.field(i).name: _value(t.field(i).type, t.field(i).nullable, rng, struct_nulls) for i in range(t.num_fields)}
    if pa.types.is_boolean(t):
        return rng.random() < 0.5
    if pa.types.is_integer(t):
        lo, hi = (
            (0, 2**t.bit_width - 1)
            if pa.types.is_unsigned_integer(t)
            else (-(2 ** (t.bit_width - 1)), 2 ** (t.bit_width - 1) - 1)
        )
        return rng.randint(lo, hi)
    if pa.types.is_floating(t):
        return rng.uniform(-1e6, 1e6)
    if pa.types.is_date32(t):
        return datetime.date(2000, 1, 1) + datetime.timedelta(days=rng.randint(0, 20000))
    if pa.types.is_binary(t):
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 6)))
    return "".join(rng.choice("abcxyzé✓") for _ in range(rng.randint(0, 6)))


def _table(schema: pa.Schema, rows: int, rng: random.Random, struct_nulls: bool) -> pa.Table:
    cols = [pa.array([_value(f.type, f.nullable, rng, struct_nulls) for _ in range(rows)], f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(schemas(), st.lists(st.integers(1, 50), min_size=1, max_size=6), st.integers(0, 2**32))
def test_random_datasets_agree_with_pylance(spec: tuple[str, pa.Schema], sizes: list[int], seed: int) -> None:
    version, schema = spec
    rng = random.Random(seed)
    tmp = tempfile.mkdtemp(prefix="lance-assets-prop-")
    try:
        path = f"{tmp}/ds.lance"
        for i, n in enumerate(sizes):
            factory.write(
                _table(schema, n, rng, version not in ("legacy", "2.0")), path, version, mode="append" if i else "create"
            )
        ds = lance.dataset(path)
        d = Dataset.open(path)
        assert d.version == ds.version == len(sizes)
        assert mf.storage_version_name(d.storage_version) == pylance_storage_version(ds)
        assert our_schema(d) == pylance_schema(ds)
        assert [f.physical_rows for f in d.fragments] == sizes
        assert_fragments_agree(d, ds)
        assert sum(f.physical_rows for f in d.fragments) == ds.count_rows()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
