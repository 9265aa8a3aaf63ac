"""Page health of fragments, read from their data files' column metadata.

``inspect`` reports it per column; the planner uses it to pick fragments at target size whose
columns are cut into many small pages (``format.pages``), so a dataset compacted earlier by
binary copy (ours, or Lance's ``force_binary_copy``) is healed by the next run. Only the
files' tails are read, several at once on an object store.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence
from typing import TypeVar

from lance_assets._proto import table_pb2
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.tail import read_v2_metadata
from lance_assets.format import manifest as mf
from lance_assets.format.pages import ColumnPages, column_pages
from lance_assets.io.ahead import ordered_ahead

T = TypeVar("T")


def read_each(ds: Dataset, read: Callable[[table_pb2.DataFragment], T], frags: Sequence[table_pb2.DataFragment]) -> list[T]:
    """``read`` of every fragment, in order: in turn on a local disk, ``storage.max_in_flight``
    (``max_concurrent_requests``) at once on an object store, where each metadata read is a
    request."""
    in_flight = 1 if ds.storage.is_local else ds.storage.max_in_flight
    return [out for _, out in ordered_ahead(frags, read, max_in_flight=in_flight, thread_name="lance-assets-meta")]


def fragment_pages(ds: Dataset, frag: table_pb2.DataFragment, live: Container[int]) -> dict[int, ColumnPages]:
    """Field id -> the pages of its column, for every live field that owns a column in a v2
    data file of ``frag`` (legacy files have batches, not pages per column: empty)."""
    out: dict[int, ColumnPages] = {}
    for df in frag.files:
        if mf.data_file_version(df) == mf.LEGACY:
            continue
        meta = read_v2_metadata(ds.storage, ds.data_file_path(df), df.file_size_bytes)
        for fid, col in zip(df.fields, df.column_indices):
            if fid in live and 0 <= col < meta.num_columns:
                out[fid] = column_pages(meta.columns[col].pages)
    return out


def fragments_pages(ds: Dataset, frags: Sequence[table_pb2.DataFragment], live: Container[int]) -> list[dict[int, ColumnPages]]:
    """``fragment_pages`` of each fragment, in order."""
    return read_each(ds, lambda frag: fragment_pages(ds, frag, live), frags)
