"""Random nested Arrow tables for property tests: every nesting of struct, list, large_list,
fixed-size list and map, with null values, null structs, null and empty lists at every depth.

Small fragments of such data are what makes pages of one column differ in their
repetition/definition layers (each file's writer picks the layers from the values it saw), so
the compaction properties draw a type once and several tiny tables of it.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from hypothesis import strategies as st

_PRIMITIVES = [pa.int64(), pa.int8(), pa.float64(), pa.string(), pa.bool_()]


def arrow_types(max_depth: int = 3, maps: bool = True) -> st.SearchStrategy[pa.DataType]:
    """A nested Arrow type of at most ``max_depth`` container levels."""
    leaves = st.sampled_from(_PRIMITIVES)

    def extend(children: st.SearchStrategy[pa.DataType]) -> st.SearchStrategy[pa.DataType]:
        options = [
            st.lists(children, min_size=1, max_size=3).map(
                lambda cs: pa.struct([pa.field(f"f{i}", c) for i, c in enumerate(cs)])
            ),
            # A list inside a struct is where pages of different files disagree most.
            st.tuples(children, leaves).map(lambda cs: pa.struct([pa.field("l", pa.list_(cs[0])), pa.field("s", cs[1])])),
            children.map(pa.list_),
            children.map(pa.large_list),
            st.tuples(leaves, st.integers(1, 3)).map(lambda t: pa.list_(t[0], t[1])),
            # Fixed-size lists of anything pylance writes them of (structs; 2.2+): their columns
            # count one value per item, and their layers sit between the lists and structs.
            st.tuples(children, st.integers(1, 3)).map(lambda t: pa.list_(_as_struct(t[0]), t[1])),
        ]
        if maps:
            options.append(children.map(lambda c: pa.map_(pa.string(), c)))
        return st.one_of(*options)

    return st.recursive(leaves, extend, max_leaves=4 * max_depth).filter(lambda t: _depth(t) <= max_depth)


def _as_struct(t: pa.DataType) -> pa.DataType:
    """``t`` if it is a struct, else a struct holding it: pylance 14 writes fixed-size lists of
    primitives and of structs only (not of lists or maps)."""
    return t if pa.types.is_struct(t) else pa.struct([pa.field("f", t)])


def _depth(t: pa.DataType) -> int:
    if pa.types.is_struct(t):
        return 1 + max(_depth(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_map(t):
        return 1 + _depth(t.item_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return 1 + _depth(t.value_type)
    return 0


def values(t: pa.DataType, nulls: bool = True, null_structs: bool = True, empties: bool = True) -> st.SearchStrategy[Any]:
    """Python values of type ``t``: None only where ``nulls`` (structs: ``null_structs``) allow,
    empty lists and maps only where ``empties`` allow."""

    def child(c: pa.DataType) -> st.SearchStrategy[Any]:
        return values(c, nulls, null_structs, empties)

    if pa.types.is_struct(t):
        inner: st.SearchStrategy[Any] = st.fixed_dictionaries(
            {t.field(i).name: child(t.field(i).type) for i in range(t.num_fields)}
        )
        return st.one_of(st.none(), inner, inner) if nulls and null_structs else inner
    low = 0 if empties else 1
    if pa.types.is_map(t):
        inner = st.lists(st.tuples(st.text(max_size=2), child(t.item_type)), min_size=low, max_size=3)
    elif pa.types.is_fixed_size_list(t):
        inner = st.lists(child(t.value_type), min_size=t.list_size, max_size=t.list_size)
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = st.lists(child(t.value_type), min_size=low, max_size=4)
    elif pa.types.is_int64(t):
        inner = st.integers(-(2**63), 2**63 - 1)
    elif pa.types.is_int8(t):
        inner = st.integers(-128, 127)
    elif pa.types.is_floating(t):
        inner = st.floats(allow_nan=False, width=64)
    elif pa.types.is_string(t):
        inner = st.text(max_size=6)
    elif pa.types.is_boolean(t):
        inner = st.booleans()
    else:
        raise ValueError(f"no values for {t}")
    return st.one_of(st.none(), inner, inner) if nulls else inner


def tables(t: pa.DataType, sizes: list[int], null_structs: bool = True) -> st.SearchStrategy[list[pa.Table]]:
    """One table per fragment size: an ``i`` row number and the nested column ``v``.

    Each fragment draws whether it holds nulls and empty lists at all, as real appends do
    (one batch has no nulls, the next has some): that is what gives one column's pages
    different layers.
    """

    def fragment(n: int) -> st.SearchStrategy[list[Any]]:
        return st.tuples(st.booleans(), st.booleans()).flatmap(
            lambda flags: st.lists(values(t, flags[0], null_structs, flags[1]), min_size=n, max_size=n)
        )

    def build(parts: list[list[Any]]) -> list[pa.Table]:
        out, start = [], 0
        for part in parts:
            out.append(pa.table({"i": pa.array(range(start, start + len(part)), pa.int64()), "v": pa.array(part, t)}))
            start += len(part)
        return out

    return st.tuples(*(fragment(n) for n in sizes)).map(lambda parts: build(list(parts)))


def guarded_types(maps: bool = True) -> st.SearchStrategy[pa.DataType]:
    """Types with a list below a struct: the shape whose pages may not share a column when
    files disagree about the struct's nulls (``lance_assets.format.repdef``)."""
    inner = arrow_types(1, maps)

    def struct_of_list(c: pa.DataType) -> pa.DataType:
        return pa.struct([pa.field("l", pa.list_(c)), pa.field("s", pa.string())])

    options = [
        inner.map(struct_of_list),
        inner.map(lambda c: pa.list_(struct_of_list(c))),
        inner.map(lambda c: pa.struct([pa.field("t", struct_of_list(c))])),
        # a fixed-size list above the struct, alone, below a list and below a struct
        st.tuples(inner, st.integers(1, 3)).map(lambda t: pa.list_(struct_of_list(t[0]), t[1])),
        st.tuples(inner, st.integers(1, 3)).map(lambda t: pa.list_(pa.list_(struct_of_list(t[0]), t[1]))),
        st.tuples(inner, st.integers(1, 3)).map(lambda t: pa.struct([pa.field("t", pa.list_(struct_of_list(t[0]), t[1]))])),
    ]
    if maps:
        options.append(inner.map(lambda c: pa.map_(pa.string(), struct_of_list(c))))
        options.append(inner.map(lambda c: pa.map_(pa.string(), pa.list_(struct_of_list(c), 2))))
    return st.one_of(*options)
