"""Blob columns in a binary copy: rewritten descriptor pages, copied sidecars, a read-back check.

Everything but a blob column's descriptor pages is copied byte for byte. For each input file
holding a blob column, ``prepare`` reads those pages (a few dozen bytes per row: the only page
bytes a copy ever reads), and says what to write instead of them: every inline position moved
by where the input's data region lands in the output, every packed or dedicated blob's sidecar
id replaced by a new id of the output file, whose sidecar is copied under the output's stem
(docs/format.md, "Blob columns"). The copier copies such an input's whole data region with one
constant shift: inline blob bytes sit in that region without belonging to any page buffer, so
copying page buffers alone would leave them behind.

``verify`` reads the written file's descriptor pages and sidecars back and checks them against
what was meant, and that the first inline blob of every input reads the same from the new file
as from the old: a wrong shift or a misplaced patch fails the task instead of being committed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lance_assets._proto import file_pb2
from lance_assets.errors import CompactionRefusedError, CorruptFileError, MissingFileError
from lance_assets.format import blobs, v2file, v2safety
from lance_assets.io import Storage

#: Bytes of each input's first inline blob compared between the old and the new file.
_SAMPLE_BYTES = 4096


@dataclass(frozen=True)
class Patch:
    """Bytes that replace a descriptor buffer: ``data`` goes where the input had ``start``."""

    start: int
    data: bytes

    @property
    def end(self) -> int:
        return self.start + len(self.data)


@dataclass(frozen=True)
class SidecarCopy:
    """One sidecar to copy: ``source`` (of an input) becomes ``target`` (of the output)."""

    source: str
    target: str
    size: int


@dataclass(frozen=True)
class Sample:
    """An inline blob to compare after writing: ``size`` bytes at ``source_at`` in the input
    ``source`` must be at ``target_at`` in the output."""

    source: str
    source_at: int
    target_at: int
    size: int


@dataclass(frozen=True)
class InputRewrite:
    """What one input needs beyond the plain copy of its data region."""

    patches: tuple[Patch, ...]  # at input offsets, inside the input's data region
    sidecars: tuple[SidecarCopy, ...]


@dataclass
class OutputBlobs:
    """The blob bookkeeping of one output file: its next sidecar id and what to check."""

    data_file: str  # the output's path, data/<stem>.lance
    next_id: int = 1  # Lance numbers a file's sidecars from 1
    patches: list[Patch] = field(default_factory=list)  # at output offsets
    sidecars: list[SidecarCopy] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def allocate(self, old_ids: Sequence[int]) -> dict[int, int]:
        """New ids for an input's sidecar ids, unique within the output."""
        mapping = {old: self.next_id + i for i, old in enumerate(old_ids)}
        self.next_id += len(old_ids)
        if self.next_id > 1 << 32:
            raise CompactionRefusedError("more blob sidecars than 32-bit ids can name", path=self.data_file)
        return mapping


def blob_field_ids(fields: Iterable[file_pb2.Field]) -> frozenset[int]:
    """Ids of the blob fields among schema fields."""
    return frozenset(f.id for f in fields if v2file.is_blob_field(f))


def blob_columns(meta: v2file.V2FileMetadata, columns: dict[int, int], blob_ids: frozenset[int], where: str) -> frozenset[int]:
    """The columns (of those copied: field id -> column) that hold blob descriptors.

    The dataset schema decides (in 2.2+ a descriptor page looks like any struct page); the file's
    own schema must agree for every copied field, else the file is refused.
    """
    in_file = v2safety.blob_field_ids_in(meta)
    for fid in columns:
        if (fid in blob_ids) != (fid in in_file):
            raise CompactionRefusedError(
                f"the dataset and the file's own schema disagree whether field {fid} is a blob column", path=where
            )
    return frozenset(col for fid, col in columns.items() if fid in blob_ids)


def prepare(
    storage: Storage,
    source: str,
    meta: v2file.V2FileMetadata,
    read: tuple[bytes, int],
    columns: Iterable[int],
    shift: int,
    output: OutputBlobs,
) -> InputRewrite:
    """Read ``source``'s blob descriptor pages and work out their rewrite.

    ``read`` is what the metadata read left: bytes of the file's end and their offset (descriptor
    pages inside them are not read again). ``shift`` is where the input's data region lands
    (output offset - input offset). Sidecar ids are allocated from ``output``; the patches and
    sidecar copies are returned, not performed. The output offsets of the patches, the sidecars
    and an inline sample are recorded in ``output`` for ``verify``. Raises
    CompactionRefusedError for layouts we cannot rewrite, CorruptFileError for descriptors that
    point outside the file or their sidecar, MissingFileError for an absent sidecar.
    """
    where = storage.url(source)
    tail, tail_offset = read
    pages: list[tuple[int, bytes, list[blobs.BlobRef]]] = []  # (buffer offset, buffer, its descriptors)
    for col in sorted(columns):
        for p, page in enumerate(meta.columns[col].pages):
            layout = blobs.page_layout(page, meta.version)
            if isinstance(layout, str):
                raise CompactionRefusedError(f"column {col} page {p}: {layout}", path=where)
            if layout.flavor is blobs.Flavor.ALL_NULL:
                continue
            buffers = [
                _read(storage, source, tail, tail_offset, o, o + s) for o, s in zip(page.buffer_offsets, page.buffer_sizes)
            ]
            refs = blobs.read_refs(layout, buffers, page.length, path=where)
            pages.append((page.buffer_offsets[layout.buffer], buffers[layout.buffer], refs))
    refs = [r for _, _, page_refs in pages for r in page_refs]
    sample = None
    for ref in refs:
        if ref.kind is blobs.BlobKind.INLINE:
            if ref.position + ref.size > meta.data_end:
                raise CorruptFileError(
                    f"inline blob at {ref.position}+{ref.size} lies outside the data region (ends at {meta.data_end})",
                    path=where,
                )
            if sample is None and ref.size:
                sample = Sample(source, ref.position, ref.position + shift, min(ref.size, _SAMPLE_BYTES))
    old_ids = blobs.sidecar_ids(refs)
    mapping = output.allocate(old_ids)
    sidecars = _sidecars(storage, source, refs, mapping, output.data_file)
    patches = []
    for start, buffer, page_refs in pages:
        data = blobs.rewrite(buffer, page_refs, shift, mapping)
        if data != buffer:
            patches.append(Patch(start, data))
    output.patches.extend(Patch(p.start + shift, p.data) for p in patches)
    output.sidecars.extend(sidecars)
    if sample is not None:
        output.samples.append(sample)
    return InputRewrite(tuple(patches), sidecars)


def _read(storage: Storage, rel: str, tail: bytes, tail_offset: int, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of ``rel``: from the tail already read when it holds them."""
    if start >= tail_offset:
        return tail[start - tail_offset : end - tail_offset]
    return storage.read_exact(rel, start, end)


def _sidecars(
    storage: Storage, source: str, refs: Sequence[blobs.BlobRef], mapping: dict[int, int], target_file: str
) -> tuple[SidecarCopy, ...]:
    """The sidecar copies an input needs, checked against the sizes its folder lists."""
    if not mapping:
        return ()
    folder = blobs.sidecar_dir(source)
    sizes = {e.name: e.size for e in storage.list(folder)}
    needed: dict[int, int] = {}  # old id -> bytes its descriptors reach
    for ref in refs:
        if ref.kind is blobs.BlobKind.PACKED or ref.kind is blobs.BlobKind.DEDICATED:
            needed[ref.blob_id] = max(needed.get(ref.blob_id, 0), ref.position + ref.size)
    out = []
    target_folder = blobs.sidecar_dir(target_file)
    for old, new in sorted(mapping.items()):
        name = blobs.sidecar_name(old)
        if name not in sizes:
            raise MissingFileError(f"blob sidecar {name} of blob id {old} is missing", path=storage.url(f"{folder}/{name}"))
        if needed[old] > sizes[name]:
            raise CorruptFileError(
                f"blob descriptors reach byte {needed[old]} of a sidecar of {sizes[name]} bytes",
                path=storage.url(f"{folder}/{name}"),
            )
        out.append(SidecarCopy(f"{folder}/{name}", f"{target_folder}/{blobs.sidecar_name(new)}", sizes[name]))
    return tuple(out)


def verify(storage: Storage, output: OutputBlobs, size: int) -> None:
    """Read the written output back and refuse it unless its blob descriptors and sidecars are
    exactly what was meant (see the module docstring)."""
    where = storage.url(output.data_file)
    for patch in output.patches:
        if patch.end > size or storage.read(output.data_file, patch.start, patch.end) != patch.data:
            raise CompactionRefusedError(f"self-check: blob descriptors at {patch.start} read back differently", path=where)
    if output.sidecars:
        listed = {e.name: e.size for e in storage.list(blobs.sidecar_dir(output.data_file))}
        for copy in output.sidecars:
            name = copy.target.rsplit("/", 1)[-1]
            if listed.get(name) != copy.size:
                raise CompactionRefusedError(
                    f"self-check: blob sidecar {name} holds {listed.get(name)} bytes, expected {copy.size}", path=where
                )
    for sample in output.samples:
        old = storage.read(sample.source, sample.source_at, sample.source_at + sample.size)
        new = storage.read(output.data_file, sample.target_at, sample.target_at + sample.size)
        if old != new:
            raise CompactionRefusedError(
                f"self-check: the inline blob at {sample.target_at} differs from its source at {sample.source_at}", path=where
            )
