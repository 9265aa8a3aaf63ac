"""Stable row ids and per-row version sequences, as compaction must carry them.

With stable row ids every fragment stores, in row order, the u64 row id of each
physical row (``inline_row_ids``, a ``RowIdSequence``) and two run-length lists
of dataset versions (``created_at`` / ``last_updated_at``, each a
``RowDatasetVersionSequence``). A compaction that rewrites fragments must hand
the very same ids and versions to the output fragments: concatenate the inputs
in order, drop the deleted rows, cut the result to the output sizes, encode.

In memory a row-id sequence is a tuple of *pieces*: ``range`` objects for
contiguous ids (a million-row fragment usually costs one object) and
``array('Q')`` for everything else, so nothing here needs a Python int per row
unless the ids really are scattered.

Encoding follows Lance's per-segment rule (no holes -> ``Range``; otherwise the
smallest estimate of ``RangeWithHoles`` 24+4*holes, ``RangeWithBitmap``
24+ceil(span/8), ``SortedArray`` 24+2*count, ties in that order; not ascending ->
``Array``). Where Lance keeps the segment boundaries of its inputs, we choose the
boundaries ourselves: consecutive ascending pieces join one segment whenever the
joint estimate is no larger than the separate ones. Any partition decodes to
the same ids, so this only makes the output smaller.
"""

from __future__ import annotations

import math
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain, islice, pairwise, repeat
from operator import lt, sub
from typing import TypeAlias

from lance_assets._proto import rowids_pb2
from lance_assets.errors import CorruptFileError
from lance_assets.format.protobuf import parse
from lance_assets.format.roaring import lsb_bit_positions

U64_MAX = (1 << 64) - 1
# Row addresses keep a row's offset in 32 bits, so no fragment can hold more rows.
MAX_FRAGMENT_ROWS = 1 << 32
# A contiguous stretch at least this long becomes a ``range`` piece when values
# are compacted; shorter ones are cheaper inside an array.
_MIN_RANGE_PIECE = 8
# Split a range around deletions into ranges while it keeps >= this many rows per deletion.
_RANGE_ROWS_PER_DELETION = 16
_BIG_ENDIAN = sys.byteorder == "big"

#: Ranges have step 1, arrays typecode "Q". A string: ``array[int]`` fails at run time before Python 3.12.
Piece: TypeAlias = "range | array[int]"


# ===================================================================== row ids


@dataclass(frozen=True, eq=False)
class RowIdSequence:
    """The row ids of a fragment's physical rows, in row order.

    ``pieces`` is normalised on construction (empty pieces dropped, touching
    ranges merged); the arrays inside must not be mutated afterwards. Equality
    compares the ids, not the piece structure.
    """

    pieces: tuple[Piece, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "pieces", _normalise(self.pieces))

    @classmethod
    def from_range(cls, start: int, end: int) -> RowIdSequence:
        if not 0 <= start <= end <= U64_MAX or end - start > MAX_FRAGMENT_ROWS:
            raise ValueError(f"bad row id range {start}..{end}")
        return cls((range(start, end),))

    @classmethod
    def from_values(cls, values: Iterable[int]) -> RowIdSequence:
        """Row ids in the given order; contiguous stretches are stored as ranges."""
        packed = array("Q", values)  # OverflowError for negatives / > u64 is a caller bug
        return cls(tuple(_compact(packed)))

    @classmethod
    def concat(cls, sequences: Iterable[RowIdSequence]) -> RowIdSequence:
        """The sequences one after another, as the rows of merged fragments follow each other."""
        return cls(tuple(chain.from_iterable(s.pieces for s in sequences)))

    @cached_property
    def _length(self) -> int:
        return sum(len(p) for p in self.pieces)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[int]:
        return chain.from_iterable(self.pieces)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RowIdSequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]  # typeshed types __hash__ as a method; None is how Python marks unhashable

    def to_list(self) -> list[int]:
        return list(self)

    def without_offsets(self, offsets: Iterable[int]) -> RowIdSequence:
        """Drop the rows at these local positions (a fragment's deleted row offsets)."""
        doomed = _checked_offsets(offsets, len(self))
        if not doomed:
            return self
        kept: list[Piece] = []
        position = 0
        for piece in self.pieces:
            lo = bisect_left(doomed, position)
            hi = bisect_left(doomed, position + len(piece), lo)
            kept.extend(_drop(piece, [d - position for d in doomed[lo:hi]]))
            position += len(piece)
        return RowIdSequence(tuple(kept))

    def split(self, sizes: Iterable[int]) -> list[RowIdSequence]:
        """Cut into consecutive sequences of ``sizes`` rows (which must add up to len)."""
        cuts = _checked_sizes(sizes, len(self))
        out: list[RowIdSequence] = []
        pieces = iter(self.pieces)
        current: Piece = range(0)
        used = 0
        for size in cuts:
            taken: list[Piece] = []
            while size:
                if used == len(current):
                    current, used = next(pieces), 0
                step = min(size, len(current) - used)
                taken.append(current[used : used + step])
                used += step
                size -= step
            out.append(RowIdSequence(tuple(taken)))
        return out


def _normalise(pieces: Iterable[Piece]) -> tuple[Piece, ...]:
    out: list[Piece] = []
    for piece in pieces:
        if not isinstance(piece, range | array):
            raise TypeError(f"row id pieces are ranges or array('Q'), not {type(piece).__name__}")
        if isinstance(piece, range) and piece.step != 1:
            raise ValueError("row id ranges must have step 1")
        if isinstance(piece, array) and piece.typecode != "Q":
            raise ValueError("row id arrays must have typecode 'Q'")
        if not len(piece):
            continue
        previous = out[-1] if out else None
        if isinstance(piece, range) and isinstance(previous, range) and previous.stop == piece[0]:  # touching
            out[-1] = range(previous.start, piece.stop)
        else:
            out.append(piece)
    return tuple(out)


def _compact(values: array[int]) -> Iterator[Piece]:
    """Ranges for contiguous stretches of ``_MIN_RANGE_PIECE`` or more, arrays between."""
    pending_from = 0
    i = 0
    n = len(values)
    while i < n:
        j = i + 1
        while j < n and values[j] == values[j - 1] + 1:
            j += 1
        if j - i >= _MIN_RANGE_PIECE:
            if pending_from < i:
                yield values[pending_from:i]
            yield range(values[i], values[j - 1] + 1)
            pending_from = j
        i = j
    if pending_from < n:
        yield values[pending_from:n]


def _drop(piece: Piece, local: list[int]) -> list[Piece]:
    """``piece`` without the positions ``local`` (sorted, in range)."""
    if not local:
        return [piece]
    bounds = zip(chain((0,), (d + 1 for d in local)), chain(local, (len(piece),)))
    parts = [piece[a:b] for a, b in bounds if a < b]
    if isinstance(piece, range) and len(local) * _RANGE_ROWS_PER_DELETION <= len(piece):
        return parts
    return [_flatten(parts)]


def _flatten(pieces: Iterable[Piece]) -> array[int]:
    values = array("Q")
    for piece in pieces:
        values.extend(piece)
    return values


# ----------------------------------------------------------------- decoding


def decode_row_ids(data: bytes, *, path: str | None = None) -> RowIdSequence:
    """Parse a serialized ``lance.table.RowIdSequence`` (e.g. ``inline_row_ids``)."""
    message = parse(rowids_pb2.RowIdSequence, data, path=path, what="row id sequence")
    pieces: list[Piece] = []
    total = 0
    for index, segment in enumerate(message.segments):
        decoded = _decode_segment(segment, path=path, what=f"row id segment {index}")
        total += sum(len(p) for p in decoded)
        if total > MAX_FRAGMENT_ROWS:
            raise CorruptFileError(f"row id sequence holds more than {MAX_FRAGMENT_ROWS} rows", path=path)
        pieces.extend(decoded)
    return RowIdSequence(tuple(pieces))


def _decode_segment(segment: rowids_pb2.U64Segment, *, path: str | None, what: str) -> list[Piece]:
    kind = segment.WhichOneof("segment")
    if kind == "range":
        return [_checked_range(segment.range.start, segment.range.end, path=path, what=what)]
    if kind == "range_with_holes":
        spec = segment.range_with_holes
        whole = _checked_range(spec.start, spec.end, path=path, what=what)
        if not spec.HasField("holes"):
            raise CorruptFileError(f"{what}: range with holes has no holes array", path=path)
        holes = _decode_array(spec.holes, path=path, what=f"{what} holes")
        if holes and not (_ascending(holes) and whole.start <= holes[0] and holes[-1] < whole.stop):
            raise CorruptFileError(f"{what}: holes must ascend strictly inside {whole.start}..{whole.stop}", path=path)
        return _drop(whole, [h - whole.start for h in holes])
    if kind == "range_with_bitmap":
        bits = segment.range_with_bitmap
        whole = _checked_range(bits.start, bits.end, path=path, what=what)
        if len(bits.bitmap) != math.ceil(len(whole) / 8):
            raise CorruptFileError(
                f"{what}: bitmap of {len(bits.bitmap)} bytes for a span of {len(whole)} ids",
                path=path,
            )
        present = lsb_bit_positions(bits.bitmap, len(whole))
        start = whole.start
        return list(_compact(array("Q", map(start.__add__, present))))
    if kind == "sorted_array":
        values = _decode_array(segment.sorted_array, path=path, what=what)
        if not _ascending(values):
            raise CorruptFileError(f"{what}: sorted array is not strictly ascending", path=path)
        return [values]
    if kind == "array":
        return [_decode_array(segment.array, path=path, what=what)]
    raise CorruptFileError(f"{what}: no segment type set", path=path)


def _checked_range(start: int, end: int, *, path: str | None, what: str) -> range:
    if start > end:
        raise CorruptFileError(f"{what}: range start {start} is past its end {end}", path=path)
    if end - start > MAX_FRAGMENT_ROWS:
        raise CorruptFileError(f"{what}: range of {end - start} ids exceeds a fragment", path=path)
    return range(start, end)


_WIDTHS = {"u16_array": 2, "u32_array": 4, "u64_array": 8}
_TYPECODES = {2: "H", 4: "I" if array("I").itemsize == 4 else "L", 8: "Q"}


def _decode_array(message: rowids_pb2.EncodedU64Array, *, path: str | None, what: str) -> array[int]:
    """``EncodedU64Array`` -> ``array('Q')``: packed little-endian offsets plus base."""
    kind = message.WhichOneof("array")
    if kind is None:
        raise CorruptFileError(f"{what}: encoded array has no width set", path=path)
    width = _WIDTHS[kind]
    if kind == "u64_array":
        payload, base = message.u64_array.values, 0
    else:
        spec = getattr(message, kind)
        payload, base = spec.offsets, spec.base
    if len(payload) % width:
        raise CorruptFileError(f"{what}: {len(payload)} bytes is not a whole number of {width}-byte values", path=path)
    if len(payload) // width > MAX_FRAGMENT_ROWS:
        raise CorruptFileError(f"{what}: more values than a fragment can hold", path=path)
    narrow = array(_TYPECODES[width])
    narrow.frombytes(payload)
    if _BIG_ENDIAN:
        narrow.byteswap()
    if width == 8:
        return narrow
    if base and narrow and base + max(narrow) > U64_MAX:
        raise CorruptFileError(f"{what}: base {base} + offset overflows u64", path=path)
    return array("Q", map(base.__add__, narrow) if base else narrow)


def _ascending(values: Sequence[int]) -> bool:
    return all(map(lt, values, islice(values, 1, None)))


# ----------------------------------------------------------------- encoding


def encode_row_ids(sequence: RowIdSequence) -> bytes:
    """Serialize as ``lance.table.RowIdSequence`` using Lance's segment choice."""
    message = rowids_pb2.RowIdSequence()
    message.segments.extend(_segments(sequence.pieces))
    return message.SerializeToString()


@dataclass
class _Group:
    """Consecutive pieces whose ids ascend strictly: they become one segment."""

    pieces: list[Piece] = field(default_factory=list)
    first: int = 0
    last: int = 0
    count: int = 0

    def add(self, piece: Piece) -> None:
        if not self.pieces:
            self.first = piece[0]
        self.pieces.append(piece)
        self.last = piece[-1]
        self.count += len(piece)


def _segments(pieces: Sequence[Piece]) -> list[rowids_pb2.U64Segment]:
    out: list[rowids_pb2.U64Segment] = []
    group = _Group()
    for piece in pieces:
        if isinstance(piece, array) and not _ascending(piece):
            if group.pieces:
                out.append(_sorted_segment(group))
                group = _Group()
            out.append(rowids_pb2.U64Segment(array=_encode_array(piece)))
            continue
        first, last, count = piece[0], piece[-1], len(piece)
        if group.pieces and not (
            first > group.last
            and _estimate(group.first, last, group.count + count)
            <= _estimate(group.first, group.last, group.count) + _estimate(first, last, count)
        ):
            out.append(_sorted_segment(group))
            group = _Group()
        group.add(piece)
    if group.pieces:
        out.append(_sorted_segment(group))
    return out


def _sizes(first: int, last: int, count: int) -> tuple[int, int, int]:
    """Lance's byte estimates for (RangeWithHoles, RangeWithBitmap, SortedArray)."""
    span = last - first + 1
    return 24 + 4 * (span - count), 24 + math.ceil(span / 8), 24 + 2 * count


def _estimate(first: int, last: int, count: int) -> int:
    if last - first + 1 == count:
        return 16
    return min(_sizes(first, last, count))


def _sorted_segment(group: _Group) -> rowids_pb2.U64Segment:
    first, last, count = group.first, group.last, group.count
    if last == U64_MAX:  # a range end would not fit u64; Lance never hands out this id
        return rowids_pb2.U64Segment(sorted_array=_encode_array(_flatten(group.pieces)))
    if last - first + 1 == count:
        return rowids_pb2.U64Segment(range=rowids_pb2.U64Segment.Range(start=first, end=last + 1))
    sizes = _sizes(first, last, count)
    best = min(sizes)
    if sizes[0] == best:
        holes = array("Q")
        for a, b in _gaps(group.pieces):
            holes.extend(range(a, b))
        return rowids_pb2.U64Segment(
            range_with_holes=rowids_pb2.U64Segment.RangeWithHoles(start=first, end=last + 1, holes=_encode_array(holes))
        )
    if sizes[1] == best:
        return rowids_pb2.U64Segment(
            range_with_bitmap=rowids_pb2.U64Segment.RangeWithBitmap(start=first, end=last + 1, bitmap=_presence_bitmap(group))
        )
    return rowids_pb2.U64Segment(sorted_array=_encode_array(_flatten(group.pieces)))


def _gaps(pieces: list[Piece]) -> Iterator[tuple[int, int]]:
    """Half-open id ranges missing between the first and last id of ascending pieces."""
    previous: int | None = None
    for piece in pieces:
        if previous is not None and piece[0] > previous + 1:
            yield previous + 1, piece[0]
        if isinstance(piece, array):
            for a, b in pairwise(piece):
                if b > a + 1:
                    yield a + 1, b
        previous = piece[-1]


def _presence_bitmap(group: _Group) -> bytes:
    """Bit i (LSB-first, as Lance reads it) set when ``first + i`` is present."""
    span = group.last - group.first + 1
    bits = bytearray(b"\xff" * math.ceil(span / 8))
    if span % 8:
        bits[-1] = (1 << (span % 8)) - 1  # bits past the span stay clear, as Lance writes them
    for a, b in _gaps(group.pieces):
        _clear_bits(bits, a - group.first, b - group.first)
    return bytes(bits)


def _clear_bits(bits: bytearray, start: int, stop: int) -> None:
    while start < stop and start % 8:
        bits[start >> 3] &= ~(1 << (start & 7)) & 0xFF
        start += 1
    whole = (stop - start) >> 3
    if whole:
        bits[start >> 3 : (start >> 3) + whole] = bytes(whole)
        start += whole << 3
    while start < stop:
        bits[start >> 3] &= ~(1 << (start & 7)) & 0xFF
        start += 1


def _encode_array(values: array[int]) -> rowids_pb2.EncodedU64Array:
    """Lance's width rule: span <= u16 -> U16 at base min; <= u32 -> U32; else (or empty) U64."""
    if not values:
        return rowids_pb2.EncodedU64Array(u64_array=rowids_pb2.EncodedU64Array.U64Array())
    low, high = min(values), max(values)
    if high - low <= 0xFFFF:
        offsets = _pack(map(sub, values, repeat(low)), 2)
        return rowids_pb2.EncodedU64Array(u16_array=rowids_pb2.EncodedU64Array.U16Array(base=low, offsets=offsets))
    if high - low <= 0xFFFFFFFF:
        offsets = _pack(map(sub, values, repeat(low)), 4)
        return rowids_pb2.EncodedU64Array(u32_array=rowids_pb2.EncodedU64Array.U32Array(base=low, offsets=offsets))
    return rowids_pb2.EncodedU64Array(u64_array=rowids_pb2.EncodedU64Array.U64Array(values=_pack(values, 8)))


def _pack(values: Iterable[int], width: int) -> bytes:
    """Little-endian packed unsigned integers of ``width`` bytes."""
    packed = array(_TYPECODES[width], values)
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed.tobytes()


# ============================================================ version sequences


@dataclass(frozen=True)
class VersionRun:
    """``count`` consecutive rows that share one dataset ``version``."""

    count: int
    version: int


@dataclass(frozen=True)
class RowVersionSequence:
    """Per-row dataset versions of a fragment (created_at or last_updated_at), run-length.

    Runs are normalised on construction (empty runs dropped, neighbours with the
    same version merged), so dataclass equality is equality of the per-row
    versions. Lance itself keeps equal neighbours apart; only the counts and
    versions carry meaning, so merging changes nothing for a reader.
    """

    runs: tuple[VersionRun, ...] = ()

    def __post_init__(self) -> None:
        merged: list[VersionRun] = []
        for run in self.runs:
            if run.count < 0 or not 0 <= run.version <= U64_MAX:
                raise ValueError(f"bad version run {run}")
            if not run.count:
                continue
            if merged and merged[-1].version == run.version:
                merged[-1] = VersionRun(merged[-1].count + run.count, run.version)
            else:
                merged.append(run)
        object.__setattr__(self, "runs", tuple(merged))

    @classmethod
    def uniform(cls, count: int, version: int) -> RowVersionSequence:
        """Every row at one version: what Lance writes for freshly written fragments."""
        return cls((VersionRun(count, version),))

    @classmethod
    def from_versions(cls, versions: Iterable[int]) -> RowVersionSequence:
        runs: list[VersionRun] = []
        for version in versions:
            if runs and runs[-1].version == version:
                runs[-1] = VersionRun(runs[-1].count + 1, version)
            else:
                runs.append(VersionRun(1, version))
        return cls(tuple(runs))

    @classmethod
    def concat(cls, sequences: Iterable[RowVersionSequence]) -> RowVersionSequence:
        return cls(tuple(chain.from_iterable(s.runs for s in sequences)))

    def __len__(self) -> int:
        return sum(run.count for run in self.runs)

    def versions(self) -> list[int]:
        """One version per row; for tests and small fragments."""
        return [v for run in self.runs for v in repeat(run.version, run.count)]

    def without_offsets(self, offsets: Iterable[int]) -> RowVersionSequence:
        """Drop the rows at these local positions (a fragment's deleted row offsets)."""
        doomed = _checked_offsets(offsets, len(self))
        kept: list[VersionRun] = []
        position = 0
        for run in self.runs:
            lo = bisect_left(doomed, position)
            hi = bisect_left(doomed, position + run.count, lo)
            kept.append(VersionRun(run.count - (hi - lo), run.version))
            position += run.count
        return RowVersionSequence(tuple(kept))

    def split(self, sizes: Iterable[int]) -> list[RowVersionSequence]:
        """Cut into consecutive sequences of ``sizes`` rows (which must add up to len)."""
        cuts = _checked_sizes(sizes, len(self))
        out: list[RowVersionSequence] = []
        runs = iter(self.runs)
        current, used = VersionRun(0, 0), 0
        for size in cuts:
            taken: list[VersionRun] = []
            while size:
                if used == current.count:
                    current, used = next(runs), 0
                step = min(size, current.count - used)
                taken.append(VersionRun(step, current.version))
                used += step
                size -= step
            out.append(RowVersionSequence(tuple(taken)))
        return out


def decode_row_versions(data: bytes, *, path: str | None = None) -> RowVersionSequence:
    """Parse a serialized ``lance.table.RowDatasetVersionSequence``.

    A run's ``span`` is a segment over local row positions; only how many
    positions it holds matters (Lance writes ``0..n``, or holes after deletions).
    """
    message = parse(rowids_pb2.RowDatasetVersionSequence, data, path=path, what="row version sequence")
    runs: list[VersionRun] = []
    total = 0
    for index, run in enumerate(message.runs):
        what = f"version run {index}"
        if not run.HasField("span"):
            raise CorruptFileError(f"{what}: no span", path=path)
        count = sum(len(p) for p in _decode_segment(run.span, path=path, what=what))
        total += count
        if total > MAX_FRAGMENT_ROWS:
            raise CorruptFileError(f"version sequence holds more than {MAX_FRAGMENT_ROWS} rows", path=path)
        runs.append(VersionRun(count, run.version))
    return RowVersionSequence(tuple(runs))


def encode_row_versions(sequence: RowVersionSequence) -> bytes:
    """Serialize as ``lance.table.RowDatasetVersionSequence``; each span is ``0..count``."""
    message = rowids_pb2.RowDatasetVersionSequence()
    for run in sequence.runs:
        message.runs.append(
            rowids_pb2.RowDatasetVersionRun(
                span=rowids_pb2.U64Segment(range=rowids_pb2.U64Segment.Range(start=0, end=run.count)),
                version=run.version,
            )
        )
    return message.SerializeToString()


# ================================================================ shared checks


def _checked_offsets(offsets: Iterable[int], length: int) -> list[int]:
    """Sorted distinct row offsets, each naming one of ``length`` rows (else ValueError)."""
    doomed = sorted(set(offsets))
    if doomed and (doomed[0] < 0 or doomed[-1] >= length):
        raise ValueError(f"row offsets {doomed[0]}..{doomed[-1]} outside 0..{length - 1}")
    return doomed


def _checked_sizes(sizes: Iterable[int], length: int) -> list[int]:
    """Chunk sizes that are non-negative and add up to ``length`` (else ValueError)."""
    cuts = list(sizes)
    if any(size < 0 for size in cuts) or sum(cuts) != length:
        raise ValueError(f"chunk sizes {cuts} do not split {length} rows")
    return cuts
