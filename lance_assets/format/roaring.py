"""Our own codec for the portable Roaring bitmap formats Lance stores.

Lance keeps these things as Roaring bitmaps: ``BITMAP`` deletion files and
``IndexMetadata.fragment_bitmap`` (the 32-bit portable format), the
fragment-reuse index's ``changed_row_addrs`` (the 64-bit "treemap" format of
the Rust ``roaring`` crate), and row-address maps (one 32-bit bitmap per
fragment, e.g. the null rows of a zone map or bloom filter index). We read and
write them ourselves so that the library needs no native Roaring dependency and
so that every malformed byte becomes a :class:`CorruptFileError` instead of a
crash or a huge allocation.

32-bit portable layout (all integers little-endian)::

    cookie 12346: [u32 cookie][u32 n][n x (u16 key, u16 card-1)][n x u32 offset][containers]
    cookie 12347: [u16 12347][u16 n-1][ceil(n/8) run flags][n x (u16 key, u16 card-1)]
                  [n x u32 offset, only when n >= 4][containers]

A container holds the values sharing the high 16 bits ``key``: a *run* container
(flag set) is ``[u16 runs][runs x (u16 start, u16 length-1)]``, otherwise an
*array* container (card <= 4096) is ``card`` sorted u16 values and a *bitmap*
container is 8192 bytes, bit ``v % 8`` of byte ``v // 8`` set for value ``v``.

64-bit treemap layout: ``[u64 n]`` then ``n`` times ``[u32 high][32-bit portable
bitmap of the low halves]``, high keys ascending.

Decoding is strict on purpose: keys must ascend, array values must ascend,
a bitmap container's popcount must equal its declared cardinality, runs must be
sorted, disjoint and non-adjacent, offsets must agree with the actual layout
and no bytes may trail the bitmap. A file that fails any of these was not
written by a Roaring implementation, so trusting it would be guessing.
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from functools import cache
from itertools import islice
from operator import lt
from typing import TYPE_CHECKING

from lance_assets.errors import CorruptFileError

if TYPE_CHECKING:  # pyarrow (and numpy below it) loads on first use, so importing the package stays cheap
    import pyarrow as pa

COOKIE_NO_RUNS = 12346
COOKIE_RUNS = 12347
ARRAY_MAX_CARDINALITY = 4096
BITMAP_CONTAINER_BYTES = 8192
MAX_CONTAINERS = 1 << 16
# With run containers the offset table is only present from this many containers on.
RUN_FORMAT_OFFSETS_FROM = 4
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1

_BIG_ENDIAN = sys.byteorder == "big"
_U32_CODE = "I" if array("I").itemsize == 4 else "L"


# --------------------------------------------------------------------------- bits


def lsb_bit_positions(bits: bytes | memoryview, nbits: int) -> array[int]:
    """Indices of the set bits among the first ``nbits`` bits, as ``array('Q')``.

    Bit ``i`` is bit ``i % 8`` of byte ``i // 8`` (least significant first), the
    order shared by Roaring bitmap containers, Arrow validity buffers and
    Lance's ``RangeWithBitmap`` row-id segments. Vectorised through pyarrow
    because a Python loop over 65 536 bits per container is too slow for
    million-row deletion files. The caller makes sure ``len(bits) * 8 >= nbits``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = pa.BooleanArray.from_buffers(pa.bool_(), nbits, [None, pa.py_buffer(bytes(bits))])
    return _u64_array_from_arrow(pc.indices_nonzero(mask))


def _u64_array_from_arrow(values: pa.Array) -> array[int]:
    """Copy a null-free pyarrow UInt64 array into an ``array('Q')`` in one step."""
    out = array("Q")
    start = values.offset * 8
    out.frombytes(memoryview(values.buffers()[1])[start : start + len(values) * 8])
    return out


# ------------------------------------------------------------------------ decoding


class _Reader:
    """Bounds-checked little-endian reads over a buffer; every overrun is corruption."""

    __slots__ = ("path", "pos", "view", "what")

    def __init__(self, data: bytes | memoryview, *, path: str | None, what: str) -> None:
        self.view = memoryview(data).cast("B")
        self.pos = 0
        self.path = path
        self.what = what

    def fail(self, reason: str) -> CorruptFileError:
        return CorruptFileError(f"{self.what}: {reason} (at byte {self.pos})", path=self.path)

    def take(self, n: int, item: str) -> memoryview:
        """The next ``n`` bytes; checked before anything is allocated from ``n``."""
        if n < 0 or self.pos + n > len(self.view):
            raise self.fail(f"truncated: {item} needs {n} bytes, {len(self.view) - self.pos} remain")
        chunk = self.view[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u16s(self, count: int, item: str) -> array[int]:
        values = array("H")
        values.frombytes(self.take(2 * count, item))
        if _BIG_ENDIAN:
            values.byteswap()
        return values

    def u32(self, item: str) -> int:
        return int.from_bytes(self.take(4, item), "little")

    def u64(self, item: str) -> int:
        return int.from_bytes(self.take(8, item), "little")

    def remaining(self) -> int:
        return len(self.view) - self.pos


def decode_bitmap(data: bytes | memoryview, *, path: str | None = None) -> list[int]:
    """Sorted values of a 32-bit portable Roaring bitmap that fills ``data`` exactly."""
    reader = _Reader(data, path=path, what="roaring bitmap")
    values = _read_bitmap(reader)
    if reader.remaining():
        raise reader.fail(f"{reader.remaining()} unexpected bytes after the bitmap")
    return values


def decode_treemap(data: bytes | memoryview, *, path: str | None = None) -> list[int]:
    """Sorted values of a 64-bit Roaring treemap (Rust ``roaring::RoaringTreemap``)."""
    reader = _Reader(data, path=path, what="roaring treemap")
    count = reader.u64("bitmap count")
    # Each entry needs a 4-byte key plus an 8-byte minimal bitmap: reject forged counts now.
    if count * 12 > reader.remaining():
        raise reader.fail(f"{count} bitmaps cannot fit in {reader.remaining()} bytes")
    values: list[int] = []
    previous = -1
    for _ in range(count):
        high = reader.u32("high key")
        if high <= previous:
            raise reader.fail(f"high keys not ascending ({high} after {previous})")
        previous = high
        offset = high << 32
        values.extend([offset | low for low in _read_bitmap(reader)])
    if reader.remaining():
        raise reader.fail(f"{reader.remaining()} unexpected bytes after the treemap")
    return values


def decode_row_addr_map(data: bytes | memoryview, *, path: str | None = None) -> dict[int, list[int] | None]:
    """Per fragment id, the sorted row offsets of a Lance row-address map (``None``: every row
    of the fragment). Layout: ``[u32 n]`` then ``n`` times ``[u32 fragment][u32 size][size
    bytes of a 32-bit portable bitmap]``, size 0 meaning the whole fragment."""
    reader = _Reader(data, path=path, what="row-address map")
    count = reader.u32("fragment count")
    if count * 8 > reader.remaining():
        raise reader.fail(f"{count} fragments cannot fit in {reader.remaining()} bytes")
    out: dict[int, list[int] | None] = {}
    for _ in range(count):
        fragment = reader.u32("fragment id")
        if fragment in out:
            raise reader.fail(f"fragment {fragment} listed twice")
        size = reader.u32("bitmap size")
        out[fragment] = decode_bitmap(reader.take(size, "bitmap"), path=path) if size else None
    if reader.remaining():
        raise reader.fail(f"{reader.remaining()} unexpected bytes after the map")
    return out


def encode_row_addr_map(entries: dict[int, list[int] | None]) -> bytes:
    """The bytes :func:`decode_row_addr_map` reads, fragments ascending (an empty offset list
    leaves its fragment out: size 0 would mean every row)."""
    kept = {f: v for f, v in entries.items() if v is None or len(v)}
    parts = [len(kept).to_bytes(4, "little")]
    for fragment in sorted(kept):
        offsets = kept[fragment]
        bitmap = b"" if offsets is None else encode_bitmap(offsets)
        parts += [fragment.to_bytes(4, "little"), len(bitmap).to_bytes(4, "little"), bitmap]
    return b"".join(parts)


def _read_bitmap(reader: _Reader) -> list[int]:
    """Read one 32-bit portable bitmap starting at ``reader.pos``."""
    start = reader.pos
    cookie = reader.u32("cookie")
    if cookie == COOKIE_NO_RUNS:
        size = reader.u32("container count")
        if size > MAX_CONTAINERS:
            raise reader.fail(f"container count {size} exceeds {MAX_CONTAINERS}")
        run_flags = b""
        has_offsets = True
    elif cookie & 0xFFFF == COOKIE_RUNS:
        size = (cookie >> 16) + 1
        run_flags = bytes(reader.take((size + 7) // 8, "run-container flags"))
        has_offsets = size >= RUN_FORMAT_OFFSETS_FROM
    else:
        raise reader.fail(f"unknown cookie {cookie:#010x}")

    descriptions = reader.u16s(2 * size, "container descriptions")
    keys = descriptions[0::2]
    cards = [c + 1 for c in descriptions[1::2]]
    if size > 1 and not all(map(lt, keys, islice(keys, 1, None))):
        raise reader.fail("container keys not strictly ascending")
    offsets = struct.unpack(f"<{size}I", reader.take(4 * size, "container offsets")) if has_offsets else None

    values: list[int] = []
    for i in range(size):
        if offsets is not None and offsets[i] != reader.pos - start:
            raise reader.fail(f"container {i} offset {offsets[i]} disagrees with layout ({reader.pos - start})")
        is_run = bool(run_flags) and bool(run_flags[i >> 3] & (1 << (i & 7)))
        base = keys[i] << 16
        if is_run:
            _read_run_container(reader, base, cards[i], values)
        elif cards[i] <= ARRAY_MAX_CARDINALITY:
            _read_array_container(reader, base, cards[i], values)
        else:
            _read_bitmap_container(reader, base, cards[i], values)
    return values


def _read_array_container(reader: _Reader, base: int, card: int, out: list[int]) -> None:
    lows = reader.u16s(card, "array container")
    if card > 1 and not all(map(lt, lows, islice(lows, 1, None))):
        raise reader.fail("array container values not strictly ascending")
    out.extend(map(base.__or__, lows))


def _read_bitmap_container(reader: _Reader, base: int, card: int, out: list[int]) -> None:
    block = reader.take(BITMAP_CONTAINER_BYTES, "bitmap container")
    ones = int.from_bytes(block, "little").bit_count()
    if ones != card:
        raise reader.fail(f"bitmap container has {ones} bits set, header says {card}")
    out.extend(map(base.__or__, lsb_bit_positions(block, 8 * BITMAP_CONTAINER_BYTES)))


def _read_run_container(reader: _Reader, base: int, card: int, out: list[int]) -> None:
    runs = int.from_bytes(reader.take(2, "run count"), "little")
    if runs == 0:
        raise reader.fail("run container with zero runs")
    pairs = reader.u16s(2 * runs, "runs")
    total = 0
    previous_end = -2  # so that a first run starting at 0 is not "adjacent"
    for run_start, extra in zip(pairs[0::2], pairs[1::2]):
        run_end = run_start + extra  # inclusive
        if run_end > 0xFFFF:
            raise reader.fail(f"run {run_start}+{extra} leaves the 16-bit container")
        if run_start <= previous_end + 1:
            raise reader.fail("runs overlap, touch, or are out of order")
        previous_end = run_end
        total += extra + 1
        out.extend(range(base + run_start, base + run_end + 1))
    if total != card:
        raise reader.fail(f"run container holds {total} values, header says {card}")


# ------------------------------------------------------------------------ encoding


def encode_bitmap(values: Iterable[int], *, use_runs: bool = False) -> bytes:
    """Serialize ``values`` (any order, duplicates ignored) as a 32-bit portable bitmap.

    Without ``use_runs`` only array and bitmap containers are written: the bytes
    pylance 14 writes for BITMAP deletion files (it inserts values one by one)
    and the form every Roaring reader, however old, understands. With
    ``use_runs`` each container takes whichever of array/bitmap/run is smallest,
    as CRoaring's ``run_optimize`` does; pylance 14 writes its range-built
    ``changed_row_addrs`` treemaps that way and reads run containers anywhere.
    """
    ordered = _sorted_unique(values, U32_MAX)
    containers = [_encode_container(key, lows, use_runs) for key, lows in _split_by_high(ordered, 16)]
    return _assemble(containers)


def encode_treemap(values: Iterable[int], *, use_runs: bool = False) -> bytes:
    """Serialize u64 ``values`` in the Rust ``roaring::RoaringTreemap`` format."""
    ordered = _sorted_unique(values, U64_MAX)
    parts = [b""]
    count = 0
    for high, lows in _split_by_high(ordered, 32):
        parts.append(high.to_bytes(4, "little"))
        parts.append(encode_bitmap(lows, use_runs=use_runs))
        count += 1
    parts[0] = count.to_bytes(8, "little")
    return b"".join(parts)


def encode_treemap_ranges(ranges: Iterable[tuple[int, int]]) -> bytes:
    """``encode_treemap(..., use_runs=True)`` of the union of half-open u64 ``[start, end)``
    ranges, without listing their values: a compaction's row addresses are long runs, and a
    million-row fragment is one range, not a million integers."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if start < 0 or end - 1 > U64_MAX:
            raise ValueError(f"range {start}..{end} is outside 0..{U64_MAX}")
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    # (high 32 bits, 16-bit key) -> runs of 16-bit lows as (start, inclusive end)
    chunks: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for start, end in merged:
        value = start
        while value < end:
            chunk_end = min(end, ((value >> 16) + 1) << 16)
            chunks.setdefault((value >> 32, (value >> 16) & 0xFFFF), []).append((value & 0xFFFF, (chunk_end - 1) & 0xFFFF))
            value = chunk_end
    parts = [b""]
    count = 0
    for high in sorted({h for h, _ in chunks}):
        containers = []
        for key in sorted(k for h, k in chunks if h == high):
            runs = chunks[(high, key)]
            card = sum(e - b + 1 for b, e in runs)
            fixed_size = 2 * card if card <= ARRAY_MAX_CARDINALITY else BITMAP_CONTAINER_BYTES
            if 2 + 4 * len(runs) < fixed_size:
                containers.append((key, card, True, _run_payload(runs)))
            else:
                containers.append(_encode_container(key, [v for b, e in runs for v in range(b, e + 1)], True))
        parts.append(high.to_bytes(4, "little"))
        parts.append(_assemble(containers))
        count += 1
    parts[0] = count.to_bytes(8, "little")
    return b"".join(parts)


def _sorted_unique(values: Iterable[int], maximum: int) -> list[int]:
    ordered = sorted(values)
    if ordered and (ordered[0] < 0 or ordered[-1] > maximum):
        raise ValueError(f"values must lie in 0..{maximum}, got {ordered[0]}..{ordered[-1]}")
    if not all(map(lt, ordered, islice(ordered, 1, None))):
        ordered = sorted(set(ordered))
    return ordered


def _split_by_high(ordered: list[int], shift: int) -> Iterable[tuple[int, list[int]]]:
    """Yield ``(high, sorted low parts)`` for each run of values sharing ``v >> shift``."""
    low_mask = (1 << shift) - 1
    i = 0
    while i < len(ordered):
        high = ordered[i] >> shift
        j = bisect_left(ordered, (high + 1) << shift, i)
        yield high, [v & low_mask for v in ordered[i:j]]
        i = j


def _encode_container(key: int, lows: list[int], use_runs: bool) -> tuple[int, int, bool, bytes]:
    """Pick a container kind for sorted 16-bit ``lows``: (key, card, is_run, payload)."""
    card = len(lows)
    fixed_size = 2 * card if card <= ARRAY_MAX_CARDINALITY else BITMAP_CONTAINER_BYTES
    if use_runs:
        runs = _runs(lows)
        if 2 + 4 * len(runs) < fixed_size:
            return key, card, True, _run_payload(runs)
    if card <= ARRAY_MAX_CARDINALITY:
        packed = array("H", lows)
        if _BIG_ENDIAN:
            packed.byteswap()
        return key, card, False, packed.tobytes()
    return key, card, False, _bitmap_payload(lows)


def _runs(lows: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive values as (start, inclusive end)."""
    runs: list[tuple[int, int]] = []
    start = previous = lows[0]
    for value in islice(lows, 1, None):
        if value != previous + 1:
            runs.append((start, previous))
            start = value
        previous = value
    runs.append((start, previous))
    return runs


def _run_payload(runs: list[tuple[int, int]]) -> bytes:
    flat = array("H", [len(runs)])
    for start, end in runs:
        flat.append(start)
        flat.append(end - start)
    if _BIG_ENDIAN:
        flat.byteswap()
    return flat.tobytes()


def _bitmap_payload(lows: list[int]) -> bytes:
    """8192-byte LSB-first bitmap; pyarrow's ``is_in`` sets all bits in one C pass."""
    import pyarrow.compute as pc

    members = pc.is_in(_all_lows(), value_set=_u32_arrow(lows))
    buffer = members.buffers()[1]
    return bytes(memoryview(buffer)[:BITMAP_CONTAINER_BYTES])


@cache
def _all_lows() -> pa.Array:
    """0..65535 as UInt32, built once: the universe a bitmap container ranges over."""
    return _u32_arrow(range(1 << 16))


def _u32_arrow(values: Iterable[int]) -> pa.Array:
    """UInt32 pyarrow array straight from packed bytes (``pa.array`` would import pandas)."""
    import pyarrow as pa

    packed = array(_U32_CODE, values)
    return pa.Array.from_buffers(pa.uint32(), len(packed), [None, pa.py_buffer(packed)])


def _assemble(containers: list[tuple[int, int, bool, bytes]]) -> bytes:
    """Header + descriptions + offsets + payloads, choosing the cookie like CRoaring."""
    size = len(containers)
    any_runs = any(is_run for _, _, is_run, _ in containers)
    header = bytearray()
    if any_runs:
        header += (COOKIE_RUNS | ((size - 1) << 16)).to_bytes(4, "little")
        flags = bytearray((size + 7) // 8)
        for i, (_, _, is_run, _) in enumerate(containers):
            if is_run:
                flags[i >> 3] |= 1 << (i & 7)
        header += flags
        has_offsets = size >= RUN_FORMAT_OFFSETS_FROM
    else:
        header += struct.pack("<II", COOKIE_NO_RUNS, size)
        has_offsets = True
    for key, card, _, _ in containers:
        header += struct.pack("<HH", key, card - 1)
    if has_offsets:
        position = len(header) + 4 * size
        for _, _, _, payload in containers:
            header += position.to_bytes(4, "little")
            position += len(payload)
    return bytes(header) + b"".join(payload for _, _, _, payload in containers)
