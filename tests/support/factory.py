"""Real Lance datasets written by pylance, in every storage version and shape we care about.

Tests compare what our code reads or writes against what pylance (the oracle)
says about the same files, so every dataset here is produced by pylance itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa

STORAGE_VERSIONS = ["legacy", "2.0", "2.1", "2.2", "2.3"]
V2_VERSIONS = ["2.0", "2.1", "2.2", "2.3"]


def write(table: pa.Table, path: Path | str, version: str, mode: str = "append", **kwargs: object) -> lance.LanceDataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lance.write_dataset(table, str(path), mode=mode, data_storage_version=version, **kwargs)


def simple_table(start: int, rows: int) -> pa.Table:
    ids = np.arange(start, start + rows, dtype=np.int64)
    return pa.table(
        {
            "id": pa.array(ids),
            "value": pa.array(ids * 0.5, pa.float64()),
            "name": pa.array([f"name-{i}" for i in ids]),
        }
    )


def mixed_table(start: int, rows: int, version: str = "2.2") -> pa.Table:
    """Many Arrow types with nulls; each storage version gets the subset it supports."""
    ids = list(range(start, start + rows))

    def nullable(values: list, every: int = 7) -> list:
        return [None if (i % every == 3) else v for i, v in zip(ids, values)]

    cols: dict[str, pa.Array] = {
        "id": pa.array(ids, pa.int64()),
        "i8": pa.array(nullable([i % 100 for i in ids]), pa.int8()),
        "u32": pa.array([i * 3 for i in ids], pa.uint32()),
        "f32": pa.array(nullable([i / 3 for i in ids]), pa.float32()),
        "flag": pa.array(nullable([i % 2 == 0 for i in ids]), pa.bool_()),
        "s": pa.array(nullable([f"str-{i}" * (1 + i % 4) for i in ids])),
        "ls": pa.array([f"large-{i}" for i in ids], pa.large_string()),
        "bin": pa.array([bytes([i % 256]) * (i % 5) for i in ids], pa.binary()),
        "fsb": pa.array([i.to_bytes(4, "little") for i in ids], pa.binary(4)),
        "dec": pa.array([Decimal(i) / 100 for i in ids], pa.decimal128(12, 2)),
        "ts": pa.array([1_700_000_000_000_000 + i for i in ids], pa.timestamp("us", tz="UTC")),
        "d": pa.array([i % 20000 for i in ids], pa.date32()),
        "lst": pa.array(nullable([list(range(i % 4)) for i in ids]), pa.list_(pa.int64())),
        "vec": pa.array([[float(i + k) for k in range(8)] for i in ids], pa.list_(pa.float32(), 8)),
        "st": pa.array([{"a": i, "b": f"b{i}"} for i in ids], pa.struct([("a", pa.int32()), ("b", pa.string())])),
    }
    if version != "legacy":
        cols.update(
            {
                "dict": pa.array([f"cat-{i % 5}" for i in ids]).dictionary_encode(),
                "llst": pa.array([[i, i + 1] for i in ids], pa.large_list(pa.int32())),
                "nested": pa.array([[[i], [i, i]] for i in ids], pa.list_(pa.list_(pa.int16()))),
                "st_lst": pa.array([{"x": [i] * (i % 3)} for i in ids], pa.struct([("x", pa.list_(pa.int64()))])),
                "lst_st": pa.array(
                    [[{"p": i, "q": float(i)}] for i in ids], pa.list_(pa.struct([("p", pa.int64()), ("q", pa.float64())]))
                ),
                "all_null": pa.array([None] * rows, pa.int32()),
            }
        )
    if version not in ("legacy", "2.0", "2.1"):  # maps need file version 2.2+
        cols["mp"] = pa.array([[("k", i)] for i in ids], pa.map_(pa.string(), pa.int64()))
    return pa.table(cols)


def appends(
    path: Path | str, version: str, sizes: list[int], make: Callable[[int, int], pa.Table] = simple_table, **kwargs: object
) -> lance.LanceDataset:
    """One fragment per append, each ``sizes[i]`` rows, ids contiguous across fragments."""
    start = 0
    ds = None
    for i, n in enumerate(sizes):
        ds = write(make(start, n), path, version, mode="append" if i else "create", **kwargs)
        start += n
    assert ds is not None
    return ds


def with_deletes(path: Path | str, version: str, *, bitmap: bool = False) -> lance.LanceDataset:
    """Three fragments; deletes give an Arrow deletion file (few rows) or a bitmap one (> 5000 rows)."""
    sizes = [7000, 300, 300] if bitmap else [300, 300, 300]
    ds = appends(path, version, sizes)
    if bitmap:
        ds.delete("id % 7 != 0 AND id < 7000")
    else:
        ds.delete("id IN (3, 5, 7, 301)")
    return lance.dataset(str(path))


def stable_row_ids(path: Path | str, version: str) -> lance.LanceDataset:
    ds = appends(path, version, [100, 50, 30], enable_stable_row_ids=True)
    ds.delete("id = 120")
    return lance.dataset(str(path))


def multi_file(path: Path | str, version: str) -> lance.LanceDataset:
    """add_columns gives every fragment a second data file."""
    ds = appends(path, version, [100, 100, 100])
    ds.add_columns({"doubled": "id * 2"})
    return lance.dataset(str(path))


def dropped_column(path: Path | str, version: str) -> lance.LanceDataset:
    ds = appends(path, version, [100, 100])
    ds.drop_columns(["value"])
    return lance.dataset(str(path))


def metadata_only_column(path: Path | str, version: str) -> lance.LanceDataset:
    """A column added without data: every file lacks it and reads as nulls."""
    ds = appends(path, version, [100, 100])
    ds.add_columns(pa.field("extra", pa.int32()))
    return lance.dataset(str(path))


def added_column(path: Path | str, version: str) -> lance.LanceDataset:
    """A column added without data, then appends that fill it: older files lack it."""
    ds = appends(path, version, [100, 100])
    ds.add_columns(pa.field("extra", pa.int32()))
    t = simple_table(200, 100)
    return write(t.append_column("extra", pa.array([i if i % 3 else None for i in range(100)], pa.int32())), path, version)


def reordered(path: Path | str, version: str) -> lance.LanceDataset:
    """Appends whose batches list columns in another order than the schema."""
    write(simple_table(0, 100), path, version, mode="create")
    t = simple_table(100, 100)
    write(t.select(["name", "value", "id"]), path, version)
    return write(simple_table(200, 100).select(["value", "name", "id"]), path, version)


def scalar_index(path: Path | str, version: str) -> lance.LanceDataset:
    ds = appends(path, version, [200, 200, 200])
    ds.create_scalar_index("id", "BTREE")
    return lance.dataset(str(path))


def vector_index(path: Path | str, version: str) -> lance.LanceDataset:
    def make(start: int, rows: int) -> pa.Table:
        rng = np.random.default_rng(start)
        vecs = rng.standard_normal((rows, 16), dtype=np.float32)
        return pa.table(
            {
                "id": pa.array(range(start, start + rows), pa.int64()),
                "vec": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), 16),
            }
        )

    ds = appends(path, version, [300, 300, 300], make=make)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.create_index("vec", "IVF_PQ", num_partitions=2, num_sub_vectors=2)
    return lance.dataset(str(path))


def blob_column(path: Path | str, version: str) -> lance.LanceDataset:
    schema = pa.schema(
        [pa.field("id", pa.int64()), pa.field("blob", pa.large_binary(), metadata={"lance-encoding:blob": "true"})]
    )

    def make(start: int, rows: int) -> pa.Table:
        return pa.table(
            {
                "id": pa.array(range(start, start + rows), pa.int64()),
                "blob": pa.array([b"x" * (i % 50 + 1) for i in range(rows)], pa.large_binary()),
            },
            schema=schema,
        )

    return appends(path, version, [50, 50], make=make)


SHAPES: dict[str, Callable[[Path | str, str], lance.LanceDataset]] = {
    "appends": lambda p, v: appends(p, v, [100, 1, 250, 30]),
    "mixed": lambda p, v: appends(p, v, [40, 60], make=lambda s, n: mixed_table(s, n, v)),
    "deletes_arrow": with_deletes,
    "deletes_bitmap": lambda p, v: with_deletes(p, v, bitmap=True),
    "stable_row_ids": stable_row_ids,
    "multi_file": multi_file,
    "dropped_column": dropped_column,
    "metadata_only_column": metadata_only_column,
    "added_column": added_column,
    "reordered": reordered,
    "scalar_index": scalar_index,
    "vector_index": vector_index,
    "blob": blob_column,
}

# Shapes pylance itself cannot produce in a storage version.
UNSUPPORTED = {("metadata_only_column", "legacy"), ("added_column", "legacy")}
