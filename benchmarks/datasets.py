"""Benchmark datasets, written by pylance: the shapes streaming writers leave behind.

Every case is one ``lance.write_dataset`` call with ``max_rows_per_file`` set to the
fragment size, so thousands of small fragments cost one commit instead of thousands.
Every table has an ``id`` column (0..rows-1) so results can be compared sorted by id.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

NULL_FRACTION = 0.1


@dataclass(frozen=True)
class Size:
    """How many fragments of how many rows."""

    fragments: int
    rows_per_fragment: int

    @property
    def rows(self) -> int:
        return self.fragments * self.rows_per_fragment


def _mask(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.random(n) < NULL_FRACTION


def _strings(rng: np.random.Generator, n: int, lo: int = 4, hi: int = 40) -> pa.Array:
    """Random ASCII strings of lo..hi bytes, built from buffers (fast for millions of rows)."""
    lengths = rng.integers(lo, hi + 1, n)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = rng.integers(97, 123, int(offsets[-1]), dtype=np.uint8)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def _with_nulls(arr: pa.Array, mask: np.ndarray) -> pa.Array:
    return pa.compute.if_else(pa.array(mask), pa.nulls(len(arr), arr.type), arr)


def mixed_table(rows: int, seed: int = 0, version: str = "2.1") -> pa.Table:
    """Ints, floats, strings, bools, timestamps, lists and structs, ~10% nulls.

    File version 2.0 cannot store null structs, so there only the struct's children are null.
    """
    rng = np.random.default_rng(seed)
    n = rows
    ids = np.arange(n, dtype=np.int64)
    list_lengths = rng.integers(0, 5, n)
    list_offsets = np.zeros(n + 1, np.int32)
    np.cumsum(list_lengths, out=list_offsets[1:])
    list_values = pa.array(rng.integers(-1000, 1000, int(list_offsets[-1]), dtype=np.int32))
    lst = pa.ListArray.from_arrays(pa.array(list_offsets), list_values, mask=pa.array(_mask(rng, n)))
    struct = pa.StructArray.from_arrays(
        [pa.array(rng.integers(0, 1 << 20, n, dtype=np.int32)), _strings(rng, n, 2, 12)],
        names=["a", "b"],
        mask=pa.array(_mask(rng, n)) if version != "2.0" else None,
    )
    if version == "2.0":
        struct = pa.StructArray.from_arrays(
            [_with_nulls(struct.field(0), _mask(rng, n)), _with_nulls(struct.field(1), _mask(rng, n))], names=["a", "b"]
        )
    return pa.table(
        {
            "id": pa.array(ids),
            "i32": pa.array(rng.integers(-(1 << 30), 1 << 30, n, dtype=np.int32), mask=_mask(rng, n)),
            "i64": pa.array(rng.integers(0, 1 << 40, n, dtype=np.int64), mask=_mask(rng, n)),
            "f32": pa.array(rng.random(n, dtype=np.float32), mask=_mask(rng, n)),
            "f64": pa.array(rng.standard_normal(n), mask=_mask(rng, n)),
            "name": _with_nulls(_strings(rng, n), _mask(rng, n)),
            "flag": pa.array(rng.random(n) < 0.5, mask=_mask(rng, n)),
            "ts": pa.array(
                1_700_000_000_000_000 + ids * 1000 + rng.integers(0, 1000, n), pa.timestamp("us", tz="UTC"), mask=_mask(rng, n)
            ),
            "tags": lst,
            "info": struct,
        }
    )


def vector_table(rows: int, seed: int = 0, version: str = "2.1", dim: int = 768) -> pa.Table:
    """An id, a short string and a 768-dim float32 embedding per row."""
    rng = np.random.default_rng(seed)
    values = pa.array(rng.standard_normal(rows * dim, dtype=np.float32))
    return pa.table(
        {
            "id": pa.array(np.arange(rows, dtype=np.int64)),
            "doc": _strings(rng, rows, 8, 24),
            "vec": pa.FixedSizeListArray.from_arrays(values, dim),
        }
    )


def wide_table(rows: int, seed: int = 0, version: str = "2.1", columns: int = 200) -> pa.Table:
    """An id and 199 more columns cycling int64, float64, int32 and string, ~10% nulls."""
    rng = np.random.default_rng(seed)
    cols: dict[str, pa.Array] = {"id": pa.array(np.arange(rows, dtype=np.int64))}
    for c in range(1, columns):
        kind = c % 4
        mask = _mask(rng, rows)
        if kind == 0:
            arr = pa.array(rng.integers(0, 1 << 40, rows, dtype=np.int64), mask=mask)
        elif kind == 1:
            arr = pa.array(rng.standard_normal(rows), mask=mask)
        elif kind == 2:
            arr = pa.array(rng.integers(0, 1000, rows, dtype=np.int32), mask=mask)
        else:
            arr = _with_nulls(_strings(rng, rows, 2, 16), mask)
        cols[f"c{c:03d}"] = arr
    return pa.table(cols)


def tiny_table(rows: int, seed: int = 0, version: str = "2.1") -> pa.Table:
    """A small event schema for the many-tiny-fragments case."""
    rng = np.random.default_rng(seed)
    ids = np.arange(rows, dtype=np.int64)
    return pa.table(
        {
            "id": pa.array(ids),
            "ts": pa.array(1_700_000_000_000_000 + ids, pa.timestamp("us", tz="UTC")),
            "user": _strings(rng, rows, 4, 12),
            "score": pa.array(rng.random(rows), mask=_mask(rng, rows)),
        }
    )


TABLES: dict[str, Callable[..., pa.Table]] = {
    "mixed": mixed_table,
    "vector": vector_table,
    "wide": wide_table,
    "tiny": tiny_table,
}


def build(case: str, version: str, size: Size, path: Path) -> Path:
    """Write ``case`` as ``size.fragments`` fragments in storage ``version`` at ``path`` (replaced)."""
    import lance

    if path.exists():
        shutil.rmtree(path)
    table = TABLES[case](size.rows, version=version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lance.write_dataset(
            table,
            str(path),
            mode="create",
            data_storage_version=version,
            max_rows_per_file=size.rows_per_fragment,
            max_rows_per_group=min(size.rows_per_fragment, 1024),
        )
    ds = lance.dataset(str(path))
    got = len(ds.get_fragments())
    if got != size.fragments:
        raise RuntimeError(f"{case}/{version}: pylance wrote {got} fragments, expected {size.fragments}")
    return path
