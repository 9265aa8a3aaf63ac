"""Repetition/definition layers of structural pages (2.1+), and which pages may share a column.

Why this module exists: a structural reader (file versions 2.1, 2.2, 2.3) decodes a read batch
from every page it spans and unravels their rep/def levels layer by layer, innermost first. A
layer that one page declares all-valid and another nullable must be materialized for the whole
batch, and the all-valid page then contributes one "valid" per *innermost item* it holds. That
count is right only when no list lies between the layer and the leaf; above a list the page holds
as many values at that layer as it has lists, not items, and pylance fails ("Incorrect number of
nulls") or, worse, reads other rows as null. Each file written by Lance is valid alone, because
its writer chose the layers from the values that file holds; it is binary copy that puts pages
of different files side by side.

The rule (proved against pylance by tests/engine/test_nested_layers.py over random nested data):
pages may share an output column when, at every *guarded* layer -- an item layer (struct,
fixed-size list or leaf validity) with a list layer inside it -- they all agree whether the layer
is all-valid. List layers may differ (nullable, emptyable, both, neither), and so may item layers
with no list inside them: their counts are exact either way.

Where layers live (see docs/format.md):

* 2.1 and 2.2: every ``PageLayout`` variant lists ``layers`` as ``RepDefLayer`` values,
  innermost first.
* 2.3 (``PlanarLayout``, no published proto): field 1 is the page's structure, either a compact
  form (field 1) whose field 1 is a byte string of ``RepDefLayer`` values innermost first, or an
  explicit form (field 2) holding one entry per layer, outermost first: an item (field 1), a
  list (field 2) or a fixed-size list (field 3: its size, then its validity as an item's). An
  explicit item whose field 1 is 1 and that records no null count (field 3) is all-valid;
  field 1 = 2 marks an item layer that is all null (it keeps no validity bits); any other item
  holds some nulls. All-null differs from some-null at a guarded layer: a struct above a list
  that is all null in one page and partly null in another makes pylance 14 fail ("Structural
  sibling fields have incompatible validity metadata"), found by the random nested-data test.

Pure functions over encoding bytes; the copier and the planner do the reading.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from google.protobuf import any_pb2

from lance_assets._proto import encodings_v2_1_pb2 as enc21
from lance_assets._proto import file2_pb2, file_pb2
from lance_assets.format.protobuf import wire_fields
from lance_assets.format.v2file import FileVersion

#: One character per layer, innermost first: a list layer, an all-valid item, a nullable item,
#: and (2.3 explicit form only) an item layer whose every value is null.
LIST, VALID, NULLABLE, ALL_NULL = "L", "V", "N", "A"
#: In a ``fixed_size_templates`` template: a fixed-size list of structs (an item layer that
#: multiplies the values inside it).
_FIXED = "F"

_FROM_ENUM: dict[int, str] = {
    enc21.REPDEF_ALL_VALID_ITEM: VALID,
    enc21.REPDEF_NULLABLE_ITEM: NULLABLE,
    enc21.REPDEF_ALL_VALID_LIST: LIST,
    enc21.REPDEF_NULLABLE_LIST: LIST,
    enc21.REPDEF_EMPTYABLE_LIST: LIST,
    enc21.REPDEF_NULL_AND_EMPTY_LIST: LIST,
}
_LAYOUT_URLS = {"/lance.encodings21.PageLayout", "/lance.encodings23.PlanarLayout"}
_LIST_TYPES = ("list", "large_list", "map")
# Layout variants of a 2.1/2.2 PageLayout that carry ``layers``.
_LAYERED = ("mini_block_layout", "full_zip_layout", "all_null_layout", "blob_layout")
# 2.3 explicit item entries: field 1 (validity kind, 1 = none null), 2 (an encoded array), 3 (null count).
_EXPLICIT_ITEM_FIELDS = {1, 2, 3}

_CACHE: dict[tuple[FileVersion, bytes], str | None] = {}
_CACHE_LIMIT = 8192


@dataclass(frozen=True)
class LayerConflict:
    """Why a column's pages cannot share an output column (or cannot be judged at all)."""

    field_id: int
    detail: str


#: Per guarded field id: its guarded layers' kinds ('V'/'N' per guarded layer, innermost first).
LayerKey = tuple[tuple[int, str], ...]


def guarded_field_ids(fields: Sequence[file_pb2.Field], version: FileVersion) -> frozenset[int]:
    """Fields whose column has a guarded layer: a list somewhere below a struct or fixed-size
    list, both on the path from the top-level field down to the field, or a fixed-size list of
    structs anywhere on that path (``fixed_size_templates``). None in 2.0 files, which have no
    structural layers.

    Decided from the schema alone, so a dataset without such a field never needs its pages read.
    """
    if version is FileVersion.V2_0:
        return frozenset()
    by_id = {f.id: f for f in fields}

    def is_list(f: file_pb2.Field) -> bool:
        return f.logical_type.split(".")[0] in _LIST_TYPES

    def makes_item(f: file_pb2.Field) -> bool:
        return f.logical_type == "struct" or f.logical_type.startswith("fixed_size_list")

    out = set(fixed_size_templates(fields))
    for f in fields:
        seen_list = False
        node: file_pb2.Field | None = f
        while node is not None:
            if node is not f and makes_item(node) and seen_list:
                out.add(f.id)
                break
            seen_list = seen_list or is_list(node)
            node = by_id.get(node.parent_id)
    return frozenset(out)


def fixed_size_templates(fields: Sequence[file_pb2.Field]) -> dict[int, str]:
    """Per field below a fixed-size list of structs: the kinds of its layers, innermost first --
    ``L`` a list, ``F`` a fixed-size list of structs, ``I`` any other item (the leaf, a struct).

    Such a list keeps child fields (a fixed-size list of primitives is folded into its leaf) and
    is an item layer in the pages, but every value of it holds several values of the layer
    inside it, as a list does: an all-valid page contributes one "valid" per innermost value,
    which at the list's own layer and above it is the wrong count. Its layer and every item
    layer above it are therefore guarded (``guarded_positions``). Each field on the path is one
    layer (a map is a list and its entries struct), as pylance 14 writes them; a page whose
    layers do not match the template is not judged (``column_kinds``).
    """
    by_id = {f.id: f for f in fields}
    out: dict[int, str] = {}
    for f in fields:
        kinds: list[str] = []
        node: file_pb2.Field | None = f
        while node is not None and len(kinds) <= len(fields):
            if node.logical_type.split(".")[0] in _LIST_TYPES:
                kinds.append(LIST)
            elif node is not f and node.logical_type.startswith("fixed_size_list"):
                kinds.append(_FIXED)
            else:
                kinds.append("I")
            node = by_id.get(node.parent_id)
        if _FIXED in kinds:
            out[f.id] = "".join(kinds)
    return out


def field_paths(fields: Sequence[file_pb2.Field]) -> dict[int, str]:
    """Dotted names (``s.x.item``) of every field, for messages an operator can act on."""
    by_id = {f.id: f for f in fields}
    out: dict[int, str] = {}
    for f in fields:
        parts: list[str] = []
        node: file_pb2.Field | None = f
        while node is not None and len(parts) <= len(fields):
            parts.append(node.name)
            node = by_id.get(node.parent_id)
        out[f.id] = ".".join(reversed(parts))
    return out


def page_layers(encoding: bytes, version: FileVersion) -> str | None:
    """The page's layers ('L'/'V'/'N', innermost first), or None when we cannot read them."""
    key = (version, encoding)
    found = _CACHE.get(key, "")
    if found != "":
        return found
    found = _decode_layers(encoding, version)
    if len(_CACHE) >= _CACHE_LIMIT:
        _CACHE.clear()
    _CACHE[key] = found
    return found


def guarded_positions(layers: str) -> tuple[int, ...]:
    """Item layers with a list layer inside them; in a ``fixed_size_templates`` template also
    each fixed-size list of structs and every item layer above it."""
    lists = [i for i in (layers.find(LIST), layers.find(_FIXED) - 1) if i >= 0]
    if not lists:
        return ()
    first = min(lists)
    return tuple(i for i in range(first + 1, len(layers)) if layers[i] != LIST)


def column_kinds(pages: Iterable[file2_pb2.ColumnMetadata.Page], version: FileVersion, template: str | None = None) -> str | None:
    """The kinds at the guarded layers shared by every page of a column, e.g. ``"N"``; None when
    a page's layers cannot be read, the pages disagree on where the lists are, or they disagree
    at a guarded layer (a file whose own pages already do that is left as it is).

    ``template`` (``fixed_size_templates``) says where a column's fixed-size lists of structs
    are, which the pages do not record; each page's layers must then line up with it.
    """
    shape: str | None = None
    kinds: str | None = None
    for page in pages:
        if page.encoding.WhichOneof("location") != "direct":
            return None
        layers = page_layers(page.encoding.direct.encoding, version)
        if layers is None:
            return None
        page_shape = "".join(LIST if c == LIST else "I" for c in layers)
        if template is None:
            positions = guarded_positions(layers)
        elif page_shape == template.replace(_FIXED, "I"):
            positions = guarded_positions(template)
        else:
            return None
        page_kinds = "".join(layers[i] for i in positions)
        if shape is None:
            shape, kinds = page_shape, page_kinds
        elif page_shape != shape or page_kinds != kinds:
            return None
    return kinds if kinds is not None else ""


def file_layer_key(
    columns: Sequence[file2_pb2.ColumnMetadata],
    owners: Mapping[int, int],
    guarded: frozenset[int],
    version: FileVersion,
    templates: Mapping[int, str] | None = None,
) -> LayerKey | LayerConflict:
    """What must be equal between files whose pages share output columns.

    ``owners`` maps field ids to their column index in this file; only ``guarded`` fields are
    looked at (``guarded_field_ids``: none in 2.0 files); ``templates`` are the dataset's
    ``fixed_size_templates``.
    """
    if not guarded:
        return ()
    key = []
    for field_id in sorted(guarded):
        column = owners.get(field_id)
        if column is None:
            continue
        kinds = column_kinds(columns[column].pages, version, (templates or {}).get(field_id))
        if kinds is None:
            return LayerConflict(
                field_id,
                "its pages' repetition/definition layers cannot be read, or already disagree within the file",
            )
        key.append((field_id, kinds))
    return tuple(key)


def describe_difference(a: LayerKey, b: LayerKey, names: Mapping[int, str]) -> str:
    """A one-line account of why two files' pages may not share columns."""
    kinds_b = dict(b)
    for field_id, kinds in a:
        other = kinds_b.get(field_id)
        if other is not None and other != kinds:

            def spell(k: str) -> str:
                spelled = {VALID: "all-valid", ALL_NULL: "all-null"}
                return ", ".join(spelled.get(c, "nullable") for c in k)

            return (
                f"field {names.get(field_id, field_id)!r}: a struct above a list is {spell(kinds)} in one "
                f"file and {spell(other)} in the other (pylance misreads such pages side by side)"
            )
    return "the files' repetition/definition layers differ"


def _decode_layers(encoding: bytes, version: FileVersion) -> str | None:
    wrapped = any_pb2.Any()
    try:
        wrapped.ParseFromString(encoding)
    except Exception:
        return None
    if wrapped.type_url not in _LAYOUT_URLS:
        return None
    if version is FileVersion.V2_3:
        return _planar_layers(wrapped.value)
    layout = enc21.PageLayout()
    try:
        layout.ParseFromString(wrapped.value)
    except Exception:
        return None
    kind = layout.WhichOneof("layout")
    if kind not in _LAYERED:
        return None
    return _from_enum_values(getattr(layout, kind).layers)


def _from_enum_values(values: Iterable[int]) -> str | None:
    out = []
    for value in values:
        c = _FROM_ENUM.get(value)
        if c is None:
            return None
        out.append(c)
    return "".join(out) or None


def _planar_layers(value: bytes) -> str | None:
    top = wire_fields(value)
    structure = [v for n, w, v in top or () if n == 1 and w == 2]
    if len(structure) != 1 or not isinstance(structure[0], bytes):
        return None
    form = wire_fields(structure[0])
    if form is None or len(form) != 1:
        return None
    number, wire_type, body = form[0]
    if wire_type != 2 or not isinstance(body, bytes):
        return None
    inner = wire_fields(body)
    if inner is None:
        return None
    if number == 1:  # compact: the enum values as bytes
        packed = [v for n, w, v in inner if n == 1 and w == 2]
        return _from_enum_values(packed[0]) if len(packed) == 1 and isinstance(packed[0], bytes) else None
    if number != 2:
        return None
    layers = []
    for n, w, entry in inner:  # outermost first
        if n != 1 or w != 2 or not isinstance(entry, bytes):
            return None
        variant = wire_fields(entry)
        if variant is None or len(variant) != 1:
            return None
        kind, wire_type, details = variant[0]
        if wire_type != 2 or not isinstance(details, bytes):
            return None
        if kind == 2:
            layers.append(LIST)
            continue
        if kind == 3:  # a fixed-size list: its size (field 1) and its validity, as an item's (field 2)
            fsl = wire_fields(details)
            item = [v for n, w, v in fsl or () if n == 2 and w == 2]
            if fsl is None or not {n for n, _, _ in fsl} <= {1, 2} or len(item) != 1 or not isinstance(item[0], bytes):
                return None
            kind, details = 1, item[0]
        layer = _explicit_item(details) if kind == 1 else None
        if layer is None:
            return None
        layers.append(layer)
    return "".join(reversed(layers)) or None


def _explicit_item(details: bytes) -> str | None:
    """The kind of one explicit 2.3 item layer (a struct, the leaf, or a fixed-size list)."""
    fields = wire_fields(details)
    if fields is None or not {n for n, _, _ in fields} <= _EXPLICIT_ITEM_FIELDS:
        return None
    varints = {n: v for n, w, v in fields if w == 0}
    if varints.get(1) == 2:
        return ALL_NULL
    if varints.get(1) == 1 and not varints.get(3):
        return VALID
    return NULLABLE
