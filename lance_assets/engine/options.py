"""Compaction options, with Lance's names and defaults where Lance has them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_TARGET_ROWS_PER_FRAGMENT = 1024 * 1024
DEFAULT_READ_BATCH_BYTES = 16 * 1024 * 1024
# Lance's file readers count rows in u32.
MAX_ROWS_PER_FILE_LIMIT = 2**32 - 1


@dataclass(frozen=True)
class CompactionOptions:
    """What to compact and how large the outputs may grow.

    ``target_rows_per_fragment`` decides which fragments are small and when an
    output file is full (closed once it reaches the target, as Lance's binary
    copy does). ``max_rows_per_file`` / ``max_bytes_per_file`` are hard caps:
    an output is closed *before* an input would push it past them, so a cap is
    exceeded only by one input that is larger on its own. ``read_batch_bytes``
    bounds the bytes a task holds in memory while copying. ``verify_output`` reads every
    written file back and refuses it unless its metadata is what was meant and its nested
    columns obey the layer rule (see ``format.repdef``); it costs one tail read per output.
    ``index_remap`` says how indices follow the moved rows: ``"defer"`` records the moves in
    Lance's fragment-reuse index so every index keeps covering them; ``"drop"`` removes the
    rewritten fragments from the indices (exact, but unindexed until ``optimize_indices``).
    """

    target_rows_per_fragment: int = DEFAULT_TARGET_ROWS_PER_FRAGMENT
    max_rows_per_file: int | None = None
    max_bytes_per_file: int | None = None
    read_batch_bytes: int = DEFAULT_READ_BATCH_BYTES
    max_source_fragments: int | None = None
    excluded_fragment_ids: frozenset[int] = frozenset()
    materialize_deletions: bool = True
    materialize_deletions_threshold: float = 0.1
    commit_every: int | None = None
    reencode_fallback: bool = True
    verify_output: bool = True
    index_remap: str = "defer"
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    dry_run: bool = False

    def __post_init__(self) -> None:
        for name in ("target_rows_per_fragment", "read_batch_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("max_rows_per_file", "max_bytes_per_file", "max_source_fragments", "commit_every"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive when set")
        if self.index_remap not in ("defer", "drop"):
            raise ValueError(f"index_remap must be 'defer' or 'drop', not {self.index_remap!r}")
        if not 0.0 <= self.materialize_deletions_threshold:
            raise ValueError("materialize_deletions_threshold must not be negative")
        object.__setattr__(self, "excluded_fragment_ids", frozenset(int(i) for i in self.excluded_fragment_ids))

    @property
    def row_cap(self) -> int:
        return min(self.max_rows_per_file or MAX_ROWS_PER_FILE_LIMIT, MAX_ROWS_PER_FILE_LIMIT)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["excluded_fragment_ids"] = sorted(self.excluded_fragment_ids)
        out.pop("storage_options")  # may hold secrets
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompactionOptions:
        data = dict(data)
        data["excluded_fragment_ids"] = frozenset(data.get("excluded_fragment_ids") or ())
        return cls(**data)
