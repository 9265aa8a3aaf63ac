"""An S3 object assembled from uploaded bytes and server-side copies of other objects' ranges.

Binary copy moves most bytes of a merged file unchanged from its inputs. On S3 those bytes need
not travel through this process at all: a multipart upload may take a part from a byte range of
another object (UploadPartCopy), copied inside the store. Only what is new (padding, the rebuilt
metadata) and the pieces too small to be a part are sent from here.

S3's rules shape the writer: every part but the last holds at least 5 MiB, a copied part at most
5 GiB, an upload at most 10,000 parts. Bytes written are buffered until they make a part; a
copied range that follows a partly filled buffer first tops it up with its own leading bytes
(read, at most 5 MiB), and ranges too small to stand as a part are read and buffered. Memory is
bounded by about ``batch_bytes`` plus ``MAX_UPLOADS_IN_FLIGHT + 1`` parts: parts go out in the
background (up to ``PART_WORKERS`` requests in flight, at most ``MAX_UPLOADS_IN_FLIGHT`` of them
uploads holding their bytes) while the next piece is read, in halves of ``batch_bytes``. On a
store with tens of milliseconds per request, one upload at a time would make the output's parts
the copy's sequential chain. With server-side copy off (for stores without UploadPartCopy) every range is
read and re-uploaded that way.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from lance_assets.io.ahead import cut, ordered_ahead

MIN_PART_BYTES = 5 * 1024 * 1024
MAX_COPY_PART_BYTES = 5 * 1024 * 1024 * 1024
MAX_PARTS = 10_000
#: Part requests in flight at once; of those, uploads (which hold their bytes) at most one.
PART_WORKERS = 8
MAX_UPLOADS_IN_FLIGHT = 4


class MultipartComposer:
    """A write-only stream to one new S3 object (s3fs), with ``copy_range`` done by the server.

    ``write`` and ``copy_range`` append; ``close`` completes the upload (a single PUT when the
    object is smaller than a part), ``abort`` discards it. Nothing is visible under the key
    before ``close`` returns, so a failed copy never leaves a partial object behind.
    """

    def __init__(self, fs: Any, path: str, *, server_side_copy: bool = True) -> None:
        self._fs = fs
        self._server_side_copy = server_side_copy
        self._bucket, self._key = fs.split_path(path)[:2]
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._part_count = 0
        self._in_flight: deque[Future[dict[str, Any]]] = deque()
        self._uploads_in_flight: deque[Future[dict[str, Any]]] = deque()
        self._pool: ThreadPoolExecutor | None = None
        self._upload_id: str | None = None
        self._position = 0
        self._closed = False
        #: Bytes copied inside the store, never read here.
        self.server_side_bytes = 0

    # -- the stream ----------------------------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._check_open()
        n = len(data)
        self._buffer += data
        self._position += n
        if len(self._buffer) >= self._part_threshold():
            self._flush_buffer()
        return n

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        """Nothing to do: parts go out when they are full (the upload completes on ``close``)."""

    def copy_range(self, source_path: str, start: int, end: int, *, batch_bytes: int, max_in_flight: int = 1) -> int:
        """Append bytes ``[start, end)`` of the S3 object ``source_path``; returns bytes copied
        inside the store. The rest (a range under two parts, the top-up of a partly filled
        buffer, or everything with server-side copy off) is read in pieces of half
        ``batch_bytes`` in all, ``max_in_flight`` requests at once."""
        self._check_open()
        if not self._server_side_copy:
            self._read_into_buffer(source_path, start, end, batch_bytes, max_in_flight)
            return 0
        if end - start < 2 * MIN_PART_BYTES:
            self._read_into_buffer(source_path, start, end, batch_bytes, max_in_flight)
            return 0
        # Stores differ on a copy range past the end (AWS refuses, others truncate).
        size = self._fs.size(source_path)
        if end > size:
            raise EOFError(f"{source_path} ends at {size}, before {end}")
        if self._buffer:
            top_up = max(0, MIN_PART_BYTES - len(self._buffer))
            self._read_into_buffer(source_path, start, start + top_up, batch_bytes)
            if self._buffer:  # (the last write may have sent it already)
                self._flush_buffer()
            start += top_up
        bucket, key = self._fs.split_path(source_path)[:2]
        remaining = end - start
        parts = max(1, -(-remaining // MAX_COPY_PART_BYTES))
        step = -(-remaining // parts)
        pos = start
        while pos < end:
            stop = min(end, pos + step)
            self._submit(
                "upload_part_copy",
                CopySource={"Bucket": bucket, "Key": key},
                CopySourceRange=f"bytes={pos}-{stop - 1}",
            )
            pos = stop
        copied = end - start
        self._position += copied
        self.server_side_bytes += copied
        return copied

    def close(self) -> None:
        """Finish the object: one PUT for a small object, else the last part and completion."""
        if self._closed:
            return
        if self._upload_id is None:
            self._call("put_object", Body=bytes(self._buffer))
        else:
            if self._buffer or not self._part_count:
                self._upload_part(bytes(self._buffer))
            self._drain()
            self._call(
                "complete_multipart_upload",
                UploadId=self._upload_id,
                MultipartUpload={"Parts": sorted(self._parts, key=lambda p: p["PartNumber"])},
            )
        self._buffer = bytearray()
        self._closed = True
        self._shutdown()
        self._fs.invalidate_cache(f"{self._bucket}/{self._key}")

    def abort(self) -> None:
        """Discard the upload (best effort: a store's lifecycle rule reaps what this misses)."""
        if self._closed:
            return
        self._closed = True
        self._buffer = bytearray()
        for future in self._in_flight:
            future.cancel()
        self._shutdown()
        if self._upload_id is not None:
            self._call("abort_multipart_upload", UploadId=self._upload_id)

    # -- parts ---------------------------------------------------------------------------------
    def _part_threshold(self) -> int:
        # 5 MiB parts for the first thousand, then larger, so 10,000 parts reach ~275 GB.
        return MIN_PART_BYTES * (1 + self._part_count // 1000)

    def _read_into_buffer(self, source_path: str, start: int, end: int, batch_bytes: int, max_in_flight: int = 1) -> None:
        budget = max(1, batch_bytes // 2)  # the other half may be uploading
        pieces = cut(start, end, budget, max_in_flight)

        def fetch(span: tuple[int, int]) -> bytes:
            chunk: bytes = self._fs.cat_file(source_path, start=span[0], end=span[1])
            if len(chunk) != span[1] - span[0]:
                raise EOFError(f"{source_path} ends before {span[1]} (short read at {span[0]})")
            return chunk

        for _, chunk in ordered_ahead(pieces, fetch, max_in_flight=max_in_flight, max_bytes=budget, cost=lambda s: s[1] - s[0]):
            self.write(chunk)

    def _flush_buffer(self) -> None:
        data = bytes(self._buffer)
        self._buffer = bytearray()
        self._upload_part(data)

    def _upload_part(self, data: bytes) -> None:
        while len(self._uploads_in_flight) >= MAX_UPLOADS_IN_FLIGHT:
            self._uploads_in_flight.popleft().result()
        self._uploads_in_flight.append(self._submit("upload_part", Body=data))

    def _submit(self, method: str, **kwargs: Any) -> Future[dict[str, Any]]:
        """Send one part request in the background; its number is fixed now, its ETag kept later."""
        self._part_count += 1
        number = self._part_count
        if number > MAX_PARTS:
            raise OSError(f"object would need more than {MAX_PARTS} parts")
        upload_id = self._ensure_upload()
        while len(self._in_flight) >= PART_WORKERS:
            self._in_flight.popleft().result()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(PART_WORKERS, thread_name_prefix="lance-assets-part")

        def send() -> dict[str, Any]:
            result = self._call(method, UploadId=upload_id, PartNumber=number, **kwargs)
            etag = result["CopyPartResult"]["ETag"] if method == "upload_part_copy" else result["ETag"]
            part = {"PartNumber": number, "ETag": etag}
            self._parts.append(part)  # list.append is atomic; order is restored at completion
            return part

        future = self._pool.submit(send)
        self._in_flight.append(future)
        return future

    def _drain(self) -> None:
        """Wait for every part in flight; the first failure raises here."""
        while self._in_flight:
            self._in_flight.popleft().result()
        self._uploads_in_flight.clear()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _ensure_upload(self) -> str:
        if self._upload_id is None:
            self._upload_id = self._call("create_multipart_upload")["UploadId"]
        return self._upload_id

    def _call(self, method: str, **kwargs: Any) -> Any:
        extra = getattr(self._fs, "s3_additional_kwargs", None) or {}
        return self._fs.call_s3(method, extra, Bucket=self._bucket, Key=self._key, **kwargs)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("write to a closed object")
