"""Compaction options, with Lance's names and defaults where Lance has them.

Each option is declared once, here: name, type, default and a description. The CLI flags
(``lance_assets.cli``) and the Dagster run config (``lance_assets.dagster.CompactionConfig``)
are derived from these declarations (:func:`option_specs`), so the three cannot drift apart.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Literal

DEFAULT_TARGET_ROWS_PER_FRAGMENT = 1024 * 1024
DEFAULT_READ_BATCH_BYTES = 16 * 1024 * 1024
# The same as lance_assets.io.storage.DEFAULT_MAX_IN_FLIGHT (a test holds them equal; not
# imported, so that building the CLI's parser does not load the storage layer).
DEFAULT_MAX_CONCURRENT_REQUESTS = 16
# Lance's file readers count rows in u32.
MAX_ROWS_PER_FILE_LIMIT = 2**32 - 1

IndexRemap = Literal["defer", "drop"]
PagesMode = Literal["copy", "coalesce"]
PAGES_COPY: PagesMode = "copy"
PAGES_COALESCE: PagesMode = "coalesce"

# Where copy tasks run (``engine.runners``) and what retention keeps (``engine.maintenance.cleanup``): declared
# here, with the compaction options, so the CLI builds its parser without importing the engine.
RUNNER_LOCAL = "local"
RUNNER_PROCESSES = "processes"
RUNNER_RAY = "ray"
RUNNER_CHOICES = (RUNNER_LOCAL, RUNNER_PROCESSES, RUNNER_RAY)
DEFAULT_OLDER_THAN_SECONDS = 14 * 86400.0  # Lance's cleanup_old_versions default: two weeks
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str) -> float:
    """``30m``, ``2h``, ``7d``, ``1.5h``, ``90s``, ``45`` (seconds) -> seconds; never negative."""
    if str(text).strip().startswith("-"):
        raise ValueError(f"a duration cannot be negative: {text!r} (use e.g. 30m, 2h, 7d; 0 for no minimum age)")
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", str(text).lower())
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 2h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


class OptionError(ValueError):
    """An option out of range. It carries the option's name and the problem apart, so each front
    end names the option as its user spells it (the CLI its flag, Dagster its config field)."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"{name} {problem}")


def _option(default: Any, help: str, *, flag: str | None = None, metavar: str | None = None, dagster: bool = True) -> Any:
    """A dataclass field carrying what the CLI and the Dagster config need to offer it."""
    meta = {"help": help, "flag": flag, "metavar": metavar, "dagster": dagster}
    if isinstance(default, (frozenset, dict)):
        return field(
            default_factory=lambda: type(default)(default),
            metadata=meta,
            hash=not isinstance(default, dict),
            compare=not isinstance(default, dict),
        )
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class CompactionOptions:
    """What to compact and how large the outputs may grow.

    Every field is described where it is declared (the ``help`` of its metadata), which is
    also the text of its CLI flag and of its Dagster config field.

    Example:
        >>> CompactionOptions(target_rows_per_fragment=250_000, max_bytes_per_file=2**30).row_cap
        4294967295
    """

    target_rows_per_fragment: int = _option(
        DEFAULT_TARGET_ROWS_PER_FRAGMENT,
        "Fragments under this row count are compacted; an output file is closed once it reaches it (Lance's default).",
        metavar="ROWS",
    )
    max_rows_per_file: int | None = _option(
        None,
        "Hard cap on rows per output file: closed before an input would pass it (only a larger single input exceeds it).",
        metavar="ROWS",
    )
    max_bytes_per_file: int | None = _option(
        None, "Hard cap on bytes per output file, kept like max_rows_per_file.", metavar="BYTES"
    )
    read_batch_bytes: int = _option(
        DEFAULT_READ_BATCH_BYTES, "Bound on the bytes a task holds in memory while copying.", metavar="BYTES"
    )
    max_concurrent_requests: int = _option(
        DEFAULT_MAX_CONCURRENT_REQUESTS,
        "Requests a task (and planning) keeps in flight on an object store: input files, their metadata and "
        "pieces of large ones are read ahead, within read_batch_bytes plus one input, and written in order. "
        "Local disks read in turn.",
        metavar="N",
    )
    task_processes: int = _option(
        2,
        "Processes that share the work of one output file merging many small files (at least 1,024, or 6,000 "
        "column chunks, on a local disk): the task's own and helpers it starts, at most one per CPU it may use; "
        "1: its own alone.",
        metavar="N",
    )
    max_source_fragments: int | None = _option(None, "Compact at most this many fragments in one run.", metavar="N")
    excluded_fragment_ids: frozenset[int] = _option(
        frozenset(), "Never compact these fragments.", flag="--exclude", metavar="FRAGMENT_ID"
    )
    materialize_deletions: bool = _option(
        True,
        "Drop the deleted rows of fragments whose deleted share exceeds the threshold, by re-encoding "
        "their group (Lance's default).",
    )
    materialize_deletions_threshold: float = _option(
        0.1, "Deleted share above which a fragment's group is re-encoded.", metavar="FRACTION"
    )
    commit_every: int | None = _option(
        None, "Commit each N finished tasks as their own version (partial progress: a killed run keeps them).", metavar="TASKS"
    )
    reencode_fallback: bool = _option(
        True,
        "Re-encode groups that cannot be binary-copied (deletions to drop, nested layers) with pylance, "
        "when installed, in the same commit; otherwise binary-copy or split them.",
    )
    verify_output: bool = _option(
        True, "Read every written file back and refuse it unless it is readable as meant (layer rule for nested columns)."
    )
    index_remap: IndexRemap = _option(
        "defer",
        "defer: record the row moves in Lance's fragment-reuse index, so indices keep covering the merged rows; "
        "drop: remove the rewritten fragments from the indices (unindexed until optimize_indices).",
    )
    pages: PagesMode = _option(
        "coalesce",
        "coalesce: columns made of many small pages (docs/format.md, Page health) are re-encoded into large "
        "pages with pylance when installed, other columns copied byte for byte, and fragments at target size "
        "whose columns have many small pages are rewritten too; copy: every page copied as it is.",
    )
    dry_run: bool = _option(False, "Only plan: report what would be read and written; write and commit nothing.")

    def __post_init__(self) -> None:
        for name in ("target_rows_per_fragment", "read_batch_bytes", "max_concurrent_requests", "task_processes"):
            if getattr(self, name) <= 0:
                raise OptionError(name, "must be positive")
        for name in ("max_rows_per_file", "max_bytes_per_file", "max_source_fragments", "commit_every"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise OptionError(name, "must be positive when set")
        if self.index_remap not in typing.get_args(IndexRemap):
            raise OptionError("index_remap", f"must be 'defer' or 'drop', not {self.index_remap!r}")
        if self.pages not in typing.get_args(PagesMode):
            raise OptionError("pages", f"must be 'copy' or 'coalesce', not {self.pages!r}")
        # A share of a fragment's rows: above 1 no fragment could ever qualify (a typo, not a choice).
        if not 0.0 <= self.materialize_deletions_threshold <= 1.0:
            raise OptionError(
                "materialize_deletions_threshold", f"must be between 0 and 1, not {self.materialize_deletions_threshold}"
            )
        object.__setattr__(self, "excluded_fragment_ids", frozenset(int(i) for i in self.excluded_fragment_ids))

    @property
    def row_cap(self) -> int:
        return min(self.max_rows_per_file or MAX_ROWS_PER_FILE_LIMIT, MAX_ROWS_PER_FILE_LIMIT)

    def rows_per_reencoded_file(self, live: int) -> int:
        """Rows per file when ``live`` rows are re-encoded: spread evenly over as many files as
        hold about ``target_rows_per_fragment`` each (a remainder is shared, not left as a small
        file of its own), never above the row cap. Lance's writer gets there by rolling over only
        between read batches; we get the same file count without depending on batch sizes."""
        files = max(1, live // self.target_rows_per_fragment)
        return max(1, min(-(-live // files), self.row_cap))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["excluded_fragment_ids"] = sorted(self.excluded_fragment_ids)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompactionOptions:
        data = dict(data)
        data["excluded_fragment_ids"] = frozenset(data.get("excluded_fragment_ids") or ())
        return cls(**data)


@dataclass(frozen=True)
class OptionSpec:
    """One option as the CLI and Dagster see it."""

    name: str
    type: Any  # the resolved annotation, e.g. ``int | None``
    default: Any
    help: str
    flag: str
    metavar: str | None
    dagster: bool


def option_specs() -> list[OptionSpec]:
    """The declarations of :class:`CompactionOptions`, in order."""
    hints = typing.get_type_hints(CompactionOptions)
    out = []
    for f in fields(CompactionOptions):
        default = f.default if f.default is not MISSING else typing.cast(Callable[[], Any], f.default_factory)()
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        out.append(
            OptionSpec(f.name, hints[f.name], default, f.metadata["help"], flag, f.metadata.get("metavar"), f.metadata["dagster"])
        )
    return out
