"""The two ends of a legacy (0.x) copy: an input data file as read, and the output being written.

Both the copy (``engine.copying.copy_legacy``) and the re-paging of batches (``engine.copying.legacy_repage``)
work through them, so they live here rather than in either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO

from lance_assets.engine.report import ProgressCallback
from lance_assets.format import legacy
from lance_assets.io import Storage


@dataclass(frozen=True)
class LegacyInput:
    """One input data file: its parsed tail, field layouts and the live field ids it provides.

    ``tail`` is the file from ``tail_offset`` on, as read for the metadata (small files: all of
    it); ranges inside it are served from memory instead of being read again.
    """

    rel_path: str
    meta: legacy.LegacyFileMetadata
    layouts: dict[int, legacy.FieldLayout]
    field_ids: tuple[int, ...]
    tail: bytes = b""
    tail_offset: int = 0

    def cached(self, start: int, end: int) -> bytes | None:
        if start >= self.tail_offset and end - self.tail_offset <= len(self.tail):
            return self.tail[start - self.tail_offset : end - self.tail_offset]
        return None


class LegacyCopier:
    """Appends source extents to ``out``, coalescing adjacent ones into single range copies."""

    def __init__(self, storage: Storage, out: IO[bytes], read_batch_bytes: int, progress: ProgressCallback | None) -> None:
        self.storage, self.out, self.batch, self.progress = storage, out, read_batch_bytes, progress
        self.pos = 0  # bytes in ``out``, including the pending run
        self.bytes_read = 0
        self._src: LegacyInput | None = None
        self._run: tuple[int, int] | None = None  # pending source range, not yet copied

    def add(self, src: LegacyInput, start: int, end: int) -> int:
        """Queue source bytes [start, end) for copying; returns their output position."""
        if self._run is not None and (src is not self._src or start != self._run[1]):
            self.flush()
        if self._run is None:
            self._src, self._run = src, (start, start)
        assert self._run is not None
        self._run = (self._run[0], end)
        dest = self.pos
        self.pos += end - start
        return dest

    def flush(self) -> None:
        run, src, self._run = self._run, self._src, None
        if run is None or run[1] == run[0]:
            return
        assert src is not None
        data = src.cached(*run)
        if data is not None:
            self.out.write(data)
            if self.progress:
                self.progress(len(data))
        else:
            self.storage.copy_range(src.rel_path, run[0], run[1], self.out, batch_bytes=self.batch, progress=self.progress)
        self.bytes_read += run[1] - run[0]

    def read(self, src: LegacyInput, start: int, end: int) -> bytes:
        """Source bytes [start, end), from memory when the metadata read already holds them."""
        data = src.cached(start, end)
        if data is None:
            data = self.storage.read_exact(src.rel_path, start, end)
        self.bytes_read += len(data)
        return data

    def write(self, data: bytes) -> None:
        self.flush()
        self.out.write(data)
        self.pos += len(data)
