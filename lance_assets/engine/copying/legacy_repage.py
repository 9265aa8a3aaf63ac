"""Re-cutting the batches of legacy (0.x) files by binary copy ("re-paging").

Lance's legacy readers place batch *i* at row *i* × (rows of batch 0) (docs/format.md), so a
merged legacy file must hold batches of one size B, except a smaller last one. Appends of
arbitrary sizes leave files whose batches do not line up when simply concatenated; for those,
:func:`write_repaged` cuts the concatenated rows anew: output batch *j* holds rows
``[j·B, (j+1)·B)``, and each of its pages is assembled from the parts ("pieces") of the input
pages those rows span. No value is decoded into Arrow and encoded again; the page bytes are cut:

* fixed-width pages: byte ranges (values × width), queued on the copier as range copies;
* bit-packed pages (booleans, fixed-size lists of booleans): the bits of each piece re-aligned
  to where the output page needs them (:class:`legacy.BitJoiner`);
* VAR_BINARY pages: the value bytes are range-copied, then the ``n + 1`` absolute positions that
  follow them are rebased to where those bytes now lie;
* list offsets (``n + 1`` entries relative to the batch's items page): rebased to start at 0,
  and the child field is cut at the matching item range, recursively (lists of lists, lists of
  structs, structs of lists);
* structs have no page of their own: their children are cut with the same pieces;
  fixed-size lists are fixed-width values (rows × size × width); null-typed fields store only a
  value count.

Legacy pages carry no validity (the format has none: a null stored in a fixed-width field is
whatever bytes the writer left in its slot, and a nullable var-binary value reads as null when it
is empty), so cutting the value bytes carries everything a reader sees.

Memory: of an offsets or positions slice, the two end entries are read first (the whole slice
when it fits in half of ``read_batch_bytes``, kept for the rewrite); anything rewritten (offsets,
positions, shifted bits) passes through memory in chunks of at most ``read_batch_bytes``, and
value bytes are copied by range. So a re-cut batch never needs more than the pages it spans,
and never a whole page at once unless it is small.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from lance_assets._proto import file_pb2
from lance_assets.engine.copying.legacy_io import LegacyCopier, LegacyInput
from lance_assets.errors import CompactionRefusedError, CorruptFileError
from lance_assets.format import legacy

#: Lance's default rows per legacy batch (``max_rows_per_group``).
DEFAULT_ROWS_PER_BATCH = 1024
_I32_MAX = 2**31 - 1

Enc = legacy.LegacyEncoding


def repage_batch_size(batch_rows: Sequence[Sequence[int]]) -> int:
    """The batch size B of a re-cut output, from the batch sizes of its input files.

    A file with several batches was cut by its writer at its rows-per-batch setting, so the
    largest batch seen is that setting (the largest of them, if the inputs disagree). When every
    input is a single batch the setting is unknown, only at least the largest batch: then
    Lance's default (1024 rows) is taken if larger, capped at the rows there are, so merging
    small appends gives few, reasonably sized batches instead of many tiny ones.
    """
    sizes = [n for rows in batch_rows for n in rows]
    largest = max(sizes, default=0)
    if largest == 0:
        raise ValueError("no rows to re-cut")
    if any(len(rows) > 1 for rows in batch_rows):
        return largest
    return max(largest, min(DEFAULT_ROWS_PER_BATCH, sum(sizes)))


@dataclass(frozen=True, slots=True)
class _Piece:
    """Values ``lo .. hi`` (rows, or items below a list) of one input page: (src, field, batch)."""

    src: LegacyInput
    batch: int
    lo: int
    hi: int


@dataclass(slots=True)
class _Ends:
    """Entries ``lo`` and ``hi`` of a piece's offsets (or positions), and all of ``lo..=hi`` when kept."""

    first: int
    last: int
    data: bytes | None


class Repager:
    """Writes the pages of every output batch and fills the output page table.

    ``fields`` are the output's fields (live, stored by every input) in schema order; ``holders``
    maps, per input fragment, each of those field ids to the input file storing it.
    """

    def __init__(
        self,
        copier: LegacyCopier,
        fields: Sequence[file_pb2.Field],
        holders: Sequence[dict[int, LegacyInput]],
        frag_rows: Sequence[int],
        batch_size: int,
    ) -> None:
        self.copier = copier
        self.holders = holders
        self.frag_rows = list(frag_rows)
        total = sum(self.frag_rows)
        self.batch_rows = [batch_size] * (total // batch_size) + ([total % batch_size] if total % batch_size else [])
        ids = [f.id for f in fields]
        self.min_id, self.max_id = min(ids), max(ids)
        self.num_batches = len(self.batch_rows)
        self.pages = [legacy.LegacyPage(0, 0)] * ((self.max_id - self.min_id + 1) * self.num_batches)
        kept = set(ids)
        self.children: dict[int, list[int]] = {fid: [] for fid in ids}
        self.top: list[int] = []
        for f in fields:
            if f.parent_id in kept:
                self.children[f.parent_id].append(f.id)
            elif f.parent_id == -1:
                self.top.append(f.id)
            else:  # a child whose parent is not written: readers could not reach it
                raise CompactionRefusedError(f"field {f.name!r} is stored without its parent field {f.parent_id}")
        # Every input stores a field with the same logical type, so any holder's layout describes it.
        self.layouts = {fid: holders[0][fid].layouts[fid] for fid in ids}
        self.chunk = max(8, copier.batch // 8 * 8)
        self._budget = 0

    # --- driving ---------------------------------------------------------------------------------
    def write(self) -> list[int]:
        """Write every output batch; returns the batch sizes (the pages are in ``self.pages``)."""
        frag, row = 0, 0
        for j, n in enumerate(self.batch_rows):
            segments: list[tuple[int, int, int]] = []  # (fragment index, first row, end row)
            need = n
            while need:
                while row == self.frag_rows[frag]:
                    frag, row = frag + 1, 0
                take = min(need, self.frag_rows[frag] - row)
                segments.append((frag, row, row + take))
                row += take
                need -= take
            for fid in self.top:
                pieces = [p for k, r0, r1 in segments for p in _cut(self.holders[k][fid], r0, r1)]
                self._emit(fid, pieces, j)
        self.copier.flush()
        return self.batch_rows

    def _emit(self, fid: int, pieces: list[_Piece], batch: int) -> None:
        layout = self.layouts[fid]
        enc = layout.encoding
        if enc is Enc.STRUCT:
            for child in self.children[fid]:
                self._emit(child, pieces, batch)
            return
        pages = [p.src.meta.page(fid, p.batch) for p in pieces]
        if enc is Enc.LIST_OFFSETS:
            self._check(layout, pieces, pages, extra=1)
            page, child_pieces = self._list(layout, pieces, pages)
            self._set(fid, batch, page)
            for child in self.children[fid]:
                self._emit(child, child_pieces, batch)
            return
        self._check(layout, pieces, pages, extra=0)
        count = sum(p.hi - p.lo for p in pieces)
        if enc is Enc.VAR_BINARY:
            page = self._var_binary(layout, pieces, pages)
        elif enc is Enc.NULL:
            page = legacy.LegacyPage(self.copier.pos, count)
        elif enc in (Enc.PLAIN, Enc.DICTIONARY) and layout.value_bits is not None:
            page = self._plain(layout.value_bits, pieces, pages)  # dictionary keys: plain integers
        else:  # nothing else has pages
            raise CompactionRefusedError(f"field {layout.name!r}: {enc.value} pages cannot be re-cut")
        self._set(fid, batch, page)

    def _set(self, fid: int, batch: int, page: legacy.LegacyPage) -> None:
        self.pages[(fid - self.min_id) * self.num_batches + batch] = page

    def _where(self, p: _Piece) -> str:
        return self.copier.storage.url(p.src.rel_path)

    def _check(self, layout: legacy.FieldLayout, pieces: list[_Piece], pages: list[legacy.LegacyPage], extra: int) -> None:
        """Every piece lies inside its page (list offsets pages hold one entry more than rows)."""
        for p, page in zip(pieces, pages):
            if not 0 <= p.lo <= p.hi <= page.length - extra:
                raise CorruptFileError(
                    f"field {layout.name!r} batch {p.batch}: values {p.lo}..{p.hi} are not inside a page of "
                    f"{page.length - extra} values (list offsets point past the items)",
                    path=self._where(p),
                )

    # --- encodings -------------------------------------------------------------------------------
    def _plain(self, bits: int, pieces: list[_Piece], pages: list[legacy.LegacyPage]) -> legacy.LegacyPage:
        copier = self.copier
        position = copier.pos
        count = sum(p.hi - p.lo for p in pieces)
        if bits % 8 == 0:
            width = bits // 8
            for p, page in zip(pieces, pages):
                if p.hi > p.lo:
                    copier.add(p.src, page.position + p.lo * width, page.position + p.hi * width)
            return legacy.LegacyPage(position, count)
        joiner = legacy.BitJoiner()
        for p, page in zip(pieces, pages):
            first_bit, end_bit = p.lo * bits, p.hi * bits
            start, end = page.position + first_bit // 8, page.position + (end_bit + 7) // 8
            offset, remaining = first_bit % 8, end_bit - first_bit
            while remaining:
                stop = min(end, start + self.chunk)
                data = copier.read(p.src, start, stop)
                nbits = min(remaining, 8 * len(data) - offset)
                copier.write(joiner.add(data, offset, nbits))
                self._progress(len(data))
                start, offset, remaining = stop, 0, remaining - nbits
        copier.write(joiner.finish())
        return legacy.LegacyPage(position, count)

    def _var_binary(self, layout: legacy.FieldLayout, pieces: list[_Piece], pages: list[legacy.LegacyPage]) -> legacy.LegacyPage:
        """[value bytes of every piece][n + 1 absolute positions], like Lance's writer lays them out."""
        copier = self.copier
        self._budget = self.chunk // 2
        ends = []
        for p, page in zip(pieces, pages):
            e = self._ends(p, page, 8)
            # Lance writes a page's values right before its positions array.
            if not 0 <= e.first <= e.last <= page.position:
                raise CorruptFileError(
                    f"field {layout.name!r} batch {p.batch}: positions array holds values {e.first}..{e.last} "
                    f"outside the page's values 0..{page.position}",
                    path=self._where(p),
                )
            ends.append(e)
        values_start = copier.pos
        starts = []
        for p, e in zip(pieces, ends):
            starts.append(copier.add(p.src, e.first, e.last) if e.last > e.first else copier.pos)
        position = copier.pos
        copier.write(values_start.to_bytes(8, "little", signed=True))
        for p, page, e, start in zip(pieces, pages, ends, starts):
            for data in self._rebased(p, page, 8, e, start - e.first, "positions"):
                copier.write(data)
        return legacy.LegacyPage(position, sum(p.hi - p.lo for p in pieces))

    def _list(
        self, layout: legacy.FieldLayout, pieces: list[_Piece], pages: list[legacy.LegacyPage]
    ) -> tuple[legacy.LegacyPage, list[_Piece]]:
        """The rebased offsets page, and the item pieces the child fields are cut with."""
        assert layout.value_bits in (32, 64)
        width = layout.value_bits // 8
        self._budget = self.chunk // 2
        ends = []
        for p, page in zip(pieces, pages):
            e = self._ends(p, page, width)
            if not 0 <= e.first <= e.last:
                raise CorruptFileError(
                    f"field {layout.name!r} batch {p.batch}: list offsets {e.first}..{e.last} are not an item range",
                    path=self._where(p),
                )
            ends.append(e)
        items = sum(e.last - e.first for e in ends)
        if width == 4 and items > _I32_MAX:
            raise CompactionRefusedError(
                f"field {layout.name!r}: an output batch would hold {items} list items, more than its int32 offsets address"
            )
        position = self.copier.pos
        self.copier.write(bytes(width))  # every output batch's items start at 0
        acc = 0
        for p, page, e in zip(pieces, pages, ends):
            for data in self._rebased(p, page, width, e, acc - e.first, "list offsets"):
                self.copier.write(data)
            acc += e.last - e.first
        child = [_Piece(p.src, p.batch, e.first, e.last) for p, e in zip(pieces, ends)]
        return legacy.LegacyPage(position, sum(p.hi - p.lo for p in pieces) + 1), child

    # --- offsets slices --------------------------------------------------------------------------
    def _ends(self, p: _Piece, page: legacy.LegacyPage, width: int) -> _Ends:
        """Entries ``p.lo`` and ``p.hi`` of the integer array at the page position (all of them when
        they fit in what is left of this page's budget)."""
        start, end = page.position + p.lo * width, page.position + (p.hi + 1) * width
        if end - start <= self._budget:
            data = self.copier.read(p.src, start, end)
            self._budget -= len(data)
            return _Ends(_int(data[:width]), _int(data[-width:]), data)
        first = self.copier.read(p.src, start, start + width)
        last = self.copier.read(p.src, end - width, end)
        return _Ends(_int(first), _int(last), None)

    def _rebased(self, p: _Piece, page: legacy.LegacyPage, width: int, e: _Ends, delta: int, what: str) -> Iterator[bytes]:
        """Entries ``p.lo + 1 ..= p.hi`` plus ``delta``, checked to lie in ``[first, last]`` and not to decrease."""
        floor = e.first
        where = self._where(p)
        if e.data is not None:
            slices: Iterator[bytes] = iter([e.data[width:]])
        else:
            slices = self._slices(p, page.position + (p.lo + 1) * width, page.position + (p.hi + 1) * width)
        for data in slices:
            if not data:
                continue
            yield legacy.shift_offsets(data, width, delta, lo=floor, hi=e.last, path=where, what=what)
            floor = _int(data[-width:])
            self._progress(len(data))

    def _slices(self, p: _Piece, start: int, end: int) -> Iterator[bytes]:
        while start < end:
            stop = min(end, start + self.chunk)
            yield self.copier.read(p.src, start, stop)
            start = stop

    def _progress(self, n: int) -> None:
        if self.copier.progress:
            self.copier.progress(n)


def _int(data: bytes) -> int:
    return int.from_bytes(data, "little", signed=True)


def _cut(src: LegacyInput, first: int, end: int) -> Iterator[_Piece]:
    """Rows ``first .. end`` of one input file as pieces of its batches."""
    offsets = src.meta.batch_offsets
    batch = bisect.bisect_right(offsets, first) - 1
    while first < end:
        stop = min(end, offsets[batch + 1])
        if stop > first:
            yield _Piece(src, batch, first - offsets[batch], stop - offsets[batch])
        first = stop
        batch += 1
