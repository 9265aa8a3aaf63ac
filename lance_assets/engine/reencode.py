"""The re-encode fallback: fragments with too many deleted rows, through pylance's own compaction.

Binary copy keeps every physical row, so it cannot drop deleted rows. Lance
rewrites a fragment whose deleted share exceeds ``materialize_deletions_threshold``;
when pylance is installed (the ``reencode`` extra) we ask it to do exactly that
for the fragments our plan left with reason ``materialize_deletions`` — every
other fragment is excluded, so nothing else is touched. Without pylance the
fragments simply stay skipped with that reason.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from lance_assets.engine.dataset import Dataset
from lance_assets.engine.options import CompactionOptions
from lance_assets.errors import CompactionRefusedError
from lance_assets.io import Storage
from lance_assets.io.storage import UNSAFE_COMMIT_OPTION


@dataclass(frozen=True)
class ReencodeResult:
    version: int | None
    fragments_removed: int
    fragments_added: int
    files_removed: int
    files_added: int


def pylance_available() -> bool:
    try:
        import lance  # noqa: F401
    except ImportError:
        return False
    return True


def reencode_with_pylance(storage: Storage, fragment_ids: list[int], options: CompactionOptions) -> ReencodeResult | None:
    """Re-encode ``fragment_ids`` (dropping their deleted rows) with pylance; None without pylance.

    Fragments that vanished since planning are ignored; if none is left nothing runs.
    """
    if not fragment_ids or not pylance_available():
        return None
    import lance

    latest = Dataset.open(storage)
    present = {f.id for f in latest.manifest.fragments}
    wanted = set(fragment_ids) & present
    if not wanted:
        return None
    pylance_options: dict[str, Any] = {k: str(v) for k, v in options.storage_options.items() if k != UNSAFE_COMMIT_OPTION and isinstance(v, (str, int, float, bool))}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = lance.dataset(storage.uri, storage_options=pylance_options or None)
            metrics = ds.optimize.compact_files(
                target_rows_per_fragment=options.target_rows_per_fragment,
                materialize_deletions=True,
                materialize_deletions_threshold=options.materialize_deletions_threshold,
                compaction_mode="reencode",
                excluded_fragment_ids=sorted(present - wanted),
            )
    except Exception as exc:  # noqa: BLE001 - pylance raises plain OSError/ValueError; ours already committed
        raise CompactionRefusedError(f"pylance could not re-encode fragments {sorted(wanted)[:10]}: {exc}", path=storage.uri) from None
    after = Dataset.open(storage)
    return ReencodeResult(
        version=after.version if after.version != latest.version else None,
        fragments_removed=metrics.fragments_removed,
        fragments_added=metrics.fragments_added,
        files_removed=metrics.files_removed,
        files_added=metrics.files_added,
    )
