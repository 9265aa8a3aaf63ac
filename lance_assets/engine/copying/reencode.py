"""Re-encoding a group whose deleted rows must go, inside the same compaction and commit.

Binary copy keeps every physical row, so it cannot drop deleted rows. Lance re-encodes a
fragment whose deleted share exceeds ``materialize_deletions_threshold`` together with its
neighbours in the bin. When pylance is installed (the ``reencode`` extra) a task holding such a
fragment is written by pylance's fragment writer -- the live rows of the group, read in order --
and *not* committed by pylance: the new fragments go into our Rewrite like every binary-copied
group, with the inputs' row ids and versions (deleted rows removed) carried by us. Without
pylance the group is binary-copied and its deletions are carried forward as a deletion file.
Datasets with blob columns are never re-encoded (``blob_reencode_refusal``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from lance_assets._proto import file_pb2, table_pb2
from lance_assets.engine.dataset import DATA_DIR, Dataset
from lance_assets.engine.report import Reason, RewriteResult
from lance_assets.engine.rows import carry_row_sequences, live_rows
from lance_assets.format import manifest as mf
from lance_assets.format.v2file import is_blob_field
from lance_assets.io.storage import UNSAFE_COMMIT_OPTION

if TYPE_CHECKING:  # the planner asks pylance_available(), so this module must not import it
    from lance_assets.engine.planning.tasks import CompactionPlan, CompactionTask


def pylance_available() -> bool:
    try:
        import lance  # noqa: F401
    except ImportError:
        return False
    return True


def pylance_storage_options(storage_options: dict[str, Any]) -> dict[str, str] | None:
    """The storage options pylance (object_store) takes: plain values, none of our own keys."""
    out = {k: str(v) for k, v in storage_options.items() if k != UNSAFE_COMMIT_OPTION and isinstance(v, (str, int, float, bool))}
    return out or None


def blob_reencode_refusal(fields: Iterable[file_pb2.Field]) -> str:
    """Why a dataset with these schema fields cannot be re-encoded ("" when it can): pylance's
    scans return a blob column's descriptors, not its bytes, so rows written back from a scan
    would lose their blobs (and point at the old file's)."""
    names = [f.name for f in fields if is_blob_field(f)]
    if not names:
        return ""
    return f"blob columns ({', '.join(names)}): pylance's scans return their descriptors, not their bytes"


def reencode_task(ds: Dataset, plan: CompactionPlan, task: CompactionTask, started: float) -> RewriteResult:
    """Write the live rows of ``task``'s fragments as new fragments with pylance; commits nothing.

    pylance failing (or missing) makes the task skipped with reason ``reencode_failed``; the
    other tasks still commit, and whatever pylance wrote is an orphan for ``cleanup``.
    """

    def failed(detail: str) -> RewriteResult:
        return RewriteResult(
            task_id=task.task_id,
            old_fragment_ids=task.fragment_ids,
            seconds=time.monotonic() - started,
            skipped_reason=Reason.REENCODE_FAILED,
            skipped_detail=detail,
        )

    blobs = blob_reencode_refusal(ds.manifest.fields)
    if blobs:  # planners never ask for this; a plan from elsewhere might
        return failed(blobs)
    if not pylance_available():
        return failed("re-encoding needs pylance: pip install 'lance_assets[reencode]'")
    import lance
    import lance.fragment

    options = plan.options
    by_id = {f.id: f for f in ds.manifest.fragments}
    inputs = [by_id[i] for i in task.fragment_ids]
    live = live_rows(inputs)
    version = mf.storage_version_name(ds.storage_version)
    pylance_options = pylance_storage_options(ds.storage.storage_options)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = lance.dataset(ds.storage.uri, version=plan.read_version, storage_options=pylance_options)

            def fragment(fragment_id: int) -> lance.fragment.LanceFragment:
                found = source.get_fragment(fragment_id)
                if found is None:  # the plan was made on this version, so this is a damaged dataset
                    raise LookupError(f"fragment {fragment_id} is not in version {plan.read_version}")
                return found

            def live_rows_in_order() -> Any:
                return source.scanner(fragments=[fragment(i) for i in task.fragment_ids], scan_in_order=True).to_reader()

            reader = live_rows_in_order()
            written = lance.fragment.write_fragments(
                reader,
                ds.storage.uri,
                schema=reader.schema,
                mode="append",
                # as planned (a rewrite only for deleted rows may write fewer, larger files)
                max_rows_per_file=max((o.rows for o in task.outputs), default=options.rows_per_reencoded_file(live)),
                max_bytes_per_file=options.max_bytes_per_file or 90 * 1024**3,
                data_storage_version="legacy" if ds.storage_version == mf.LEGACY else version,
                storage_options=pylance_options,
            )
    except Exception as exc:
        return failed(f"pylance could not re-encode fragments {list(task.fragment_ids)[:10]}: {exc}")
    fragments = [_fragment(meta.to_json()) for meta in written]
    files = [f"{DATA_DIR}/{df.path}" for f in fragments for df in f.files]
    rows = sum(f.physical_rows for f in fragments)
    problem = f"pylance wrote {rows} rows for {live} live rows" if rows != live else None
    if problem is None and ds.storage_version != mf.LEGACY:
        # pylance 14 misreads some nested values it writes in one go (values each input file
        # held readably): read every new file back and compare it with the inputs' rows.
        # (Legacy files have no structural rep/def layers, and pylance's file reader is v2 only.)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            problem = _differs(live_rows_in_order(), (ds.storage.url(rel) for rel in files), pylance_options)
    if problem is not None:
        for rel in files:
            ds.storage.delete(rel, missing_ok=True)
        return failed(problem)
    if ds.stable_row_ids:
        carry_row_sequences(ds, inputs, fragments, live_only=True)
    return RewriteResult(
        task_id=task.task_id,
        old_fragment_ids=task.fragment_ids,
        new_fragments=tuple(RewriteResult.encode_fragment(f) for f in fragments),
        files_written=tuple(files),
        rows=rows,
        bytes_read=task.bytes,
        bytes_written=sum(df.file_size_bytes for f in fragments for df in f.files),
        seconds=time.monotonic() - started,
        reencoded=True,
    )


def _differs(expected: Any, urls: Iterator[str], storage_options: dict[str, str] | None) -> str | None:
    """Why the files at ``urls``, read in order with pylance's file reader, do not hold exactly
    the rows of the ``expected`` batch reader (None when they do)."""
    from lance.file import LanceFileReader

    def batches() -> Iterator[Any]:
        for url in urls:
            yield from LanceFileReader(url, storage_options=storage_options).read_all().to_batches()

    def non_empty(stream: Any) -> Iterator[Any]:
        return (batch for batch in stream if batch.num_rows)

    want, got = non_empty(expected), non_empty(batches())
    a = b = None
    row = 0
    try:
        while True:
            a = a if a is not None and a.num_rows else next(want, None)
            b = b if b is not None and b.num_rows else next(got, None)
            if a is None or b is None:
                return None if a is b else f"re-encoded files end at row {row} where the inputs do not (or the reverse)"
            n = min(a.num_rows, b.num_rows)
            x, y = a.slice(0, n), b.slice(0, n).select(a.schema.names)
            if not (x.equals(y) or x.to_pylist() == y.to_pylist()):
                return (
                    f"pylance's re-encode of these rows reads back differently from row {row} on "
                    "(a pylance bug with such nested values)"
                )
            a, b, row = a.slice(n), b.slice(n), row + n
    except Exception as exc:
        return f"pylance cannot read back its re-encode of these rows ({type(exc).__name__}: {str(exc)[:200]})"


def _fragment(meta: dict[str, Any]) -> table_pb2.DataFragment:
    """Our DataFragment for pylance's FragmentMetadata (id assigned at commit)."""
    out = table_pb2.DataFragment(physical_rows=int(meta["physical_rows"]))
    for f in meta["files"]:
        df = out.files.add(
            path=f["path"],
            fields=f["fields"],
            column_indices=f.get("column_indices") or [],
            file_major_version=int(f.get("file_major_version") or 0),
            file_minor_version=int(f.get("file_minor_version") or 0),
            file_size_bytes=int(f.get("file_size_bytes") or 0),
        )
        if f.get("base_id") is not None:
            df.base_id = int(f["base_id"])
    return out
