"""Page health of a v2 data file: how many pages each column has, and how many are small.

Lance's reader pays a fixed cost per page (a request, a decoder, a scheduling step), so a file
whose columns are cut into thousands of tiny pages reads far slower than the same rows in a
few large pages. Binary copy of many small appends makes exactly such files: every input file
becomes one page per column of the output. These functions measure it from the column metadata
alone (no page is read), for ``inspect``, the planner and the compaction report.

The threshold comes from measuring what pylance 14's writer produces for a fresh file of one
million rows (int64, float64, string, bool, list<int32>, 768-dim vectors, a 200-column table) in
file versions 2.0, 2.1 and 2.2: one page per flat column (from 125 KB of booleans up to 61 MB
of vectors), and for list columns in 2.1/2.2 pages of about 64-180 KB (a page per ~20,000-30,000
rows). No page it writes is under 64 KiB except the last page of a column, or a column that is
small in total. Binary copy of 100- or 1,000-row appends gives pages of 13 bytes (booleans) to
about 30 KB (strings).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lance_assets._proto import file2_pb2

#: A page holding fewer bytes than this (but some) is *small*: pylance's writer makes none of
#: them except a column's last page, so several in one column mean the file was assembled
#: from small pieces (binary copy of small appends).
SMALL_PAGE_BYTES = 64 * 1024
#: A column with at least this many small pages is worth coalescing (one small tail page, or a
#: couple left where a column changes encoding, is what a fresh write has too).
MIN_SMALL_PAGES = 4


@dataclass(frozen=True)
class ColumnPages:
    """One column's pages in one file (or summed over several files)."""

    pages: int = 0
    rows: int = 0  # summed page lengths (values, for a 2.0 child of a list)
    bytes: int = 0  # summed page buffer sizes
    small_pages: int = 0  # pages with 0 < bytes < SMALL_PAGE_BYTES

    @property
    def fragmented(self) -> bool:
        """Whether the column holds enough small pages that coalescing them pays."""
        return self.small_pages >= MIN_SMALL_PAGES

    def __add__(self, other: ColumnPages) -> ColumnPages:
        return ColumnPages(
            self.pages + other.pages, self.rows + other.rows, self.bytes + other.bytes, self.small_pages + other.small_pages
        )


def page_bytes(page: file2_pb2.ColumnMetadata.Page) -> int:
    """The bytes a page's buffers hold."""
    return sum(page.buffer_sizes)


def column_pages(pages: Iterable[file2_pb2.ColumnMetadata.Page]) -> ColumnPages:
    """Page counts and sizes of one column. Pages without buffers (2.0 struct headers, all-null
    pages) cost a reader nothing to fetch and are not counted as small."""
    count = rows = total = small = 0
    for page in pages:
        size = page_bytes(page)
        count += 1
        rows += page.length
        total += size
        if 0 < size < SMALL_PAGE_BYTES:
            small += 1
    return ColumnPages(count, rows, total, small)


def file_pages(columns: Sequence[file2_pb2.ColumnMetadata]) -> list[ColumnPages]:
    """``column_pages`` of every column of a file, in column order."""
    return [column_pages(c.pages) for c in columns]


def total_pages(stats: Iterable[ColumnPages]) -> ColumnPages:
    """The sum of several columns' (or files') page counts."""
    out = ColumnPages()
    for s in stats:
        out = out + s
    return out
