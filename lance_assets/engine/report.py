"""What a task produced and what a compaction did: small, picklable, JSON-ready records."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from lance_assets._proto import table_pb2

#: Called with the number of bytes just copied, from whichever thread copied them.
ProgressCallback = Callable[[int], None]


class Reason(StrEnum):
    """Why a fragment was skipped (``skipped``) or merged with a caveat (``notes``). The values
    are stable strings, part of the JSON output and of plans that cross processes."""

    # planning: left alone
    EXCLUDED = "excluded"
    AT_TARGET_SIZE = "at_target_size"
    EMPTY = "empty"
    NO_NEIGHBOUR = "no_neighbour"
    NO_REDUCTION = "no_reduction"
    MAX_SOURCE_FRAGMENTS = "max_source_fragments"
    MATERIALIZE_DELETIONS = "materialize_deletions"  # a lone fragment whose deleted rows only a re-encode drops
    INDEXED = "indexed"
    UNKNOWN_FRAGMENT_FIELDS = "unknown_fragment_fields"
    FILE_VERSION_MISMATCH = "file_version_mismatch"
    BASE_PATH = "base_path"
    EXTERNAL_ROW_IDS = "external_row_ids"
    COLUMN_MAPPING = "column_mapping"
    LEGACY_DICTIONARY = "legacy_dictionary"  # no longer produced (legacy dictionaries merge); kept for old reports
    BLOB_COLUMN = "blob_column"
    INCOMPATIBLE_LAYERS = "incompatible_layers"  # nested columns whose pages disagree on layers (docs/format.md)
    # skipped: at target size with many small pages that cannot be coalesced; notes: rewritten to coalesce them
    SMALL_PAGES = "small_pages"
    # running: a task or a commit that did not happen
    NOT_COPYABLE = "not_copyable"
    REENCODE_FAILED = "reencode_failed"
    NOT_COMMITTED = "not_committed"  # partial progress: an earlier version landed, this part did not
    # notes: merged, with a caveat
    DELETIONS_KEPT = "deletions_kept"  # merged by binary copy although over the threshold
    REENCODED = "reencoded"  # merged by a re-encode because binary copy may not put it beside its neighbour
    INDEX_UPKEEP_FAILED = "index_upkeep_failed"  # the commit landed; pylance's optimize_indices did not


@dataclass(frozen=True)
class SkippedFragment:
    """One fragment a plan or run left alone (or merged with a caveat), and why."""

    fragment_id: int | None  # None: about the run, not one fragment
    reason: Reason
    detail: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SkippedFragment:
        return cls(data["fragment_id"], Reason(data["reason"]), data.get("detail", ""))


@dataclass(frozen=True)
class RewriteResult:
    """The outcome of one task: new fragments (ids unassigned) or the reason it stopped.

    Fragments travel as base64 protobuf so a result can cross process and
    machine boundaries (Dagster dynamic outputs, JSON) without loss.
    """

    task_id: int
    old_fragment_ids: tuple[int, ...]
    new_fragments: tuple[str, ...] = ()
    # Per new fragment: base64 of its deletion file ("" for none). The file is written at
    # commit time, because its name holds the fragment id, which only the commit assigns.
    deletion_files: tuple[str, ...] = ()
    files_written: tuple[str, ...] = ()
    rows: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    skipped_reason: str = ""
    skipped_detail: str = ""
    reencoded: bool = False  # written by pylance's re-encode (deleted rows dropped), not by binary copy
    # Page health of the written files (v2 binary copies; 0 and empty otherwise): pages of the
    # inputs' kept columns and of the outputs' columns, the column paths re-encoded into large
    # pages (by pylance / natively), those still made of small pages, and why they were left.
    pages_before: int = 0
    pages_after: int = 0
    columns_coalesced_pylance: tuple[str, ...] = ()
    columns_coalesced_native: tuple[str, ...] = ()
    columns_left_small: tuple[str, ...] = ()
    pages_notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.skipped_reason

    @staticmethod
    def encode_fragment(fragment: table_pb2.DataFragment) -> str:
        return base64.b64encode(fragment.SerializeToString()).decode("ascii")

    def fragments(self) -> list[table_pb2.DataFragment]:
        out = []
        for data in self.new_fragments:
            frag = table_pb2.DataFragment()
            frag.ParseFromString(base64.b64decode(data))
            out.append(frag)
        return out

    def pending_deletions(self) -> list[bytes]:
        """Deletion-file bytes per new fragment (b"" where it has none)."""
        padded = list(self.deletion_files) + [""] * (len(self.new_fragments) - len(self.deletion_files))
        return [base64.b64decode(d) if d else b"" for d in padded]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RewriteResult:
        data = dict(data)
        for key in (
            "old_fragment_ids",
            "new_fragments",
            "deletion_files",
            "files_written",
            "columns_coalesced_pylance",
            "columns_coalesced_native",
            "columns_left_small",
            "pages_notes",
        ):
            data[key] = tuple(data.get(key) or ())
        return cls(**data)


@dataclass(frozen=True)
class CompactionReport:
    """The JSON the CLI prints and the metadata Dagster records; key names are a public interface."""

    uri: str
    read_version: int
    version: int | None
    fragments_removed: int = 0
    fragments_added: int = 0
    files_removed: int = 0
    files_added: int = 0
    rows: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    tasks: int = 0
    tasks_skipped: int = 0
    skipped: list[SkippedFragment] = field(default_factory=list)
    dry_run: bool = False
    plan: dict[str, Any] | None = None
    retries: int = 0
    committed_versions: list[int] = field(default_factory=list)
    reencoded_fragments: int = 0  # fragments of groups re-encoded by pylance (deleted rows dropped)
    notes: list[SkippedFragment] = field(default_factory=list)  # merged, with a caveat
    # Per user index: {name, type, remap ("reuse_index" | "rewritten" | "moved" | "dropped" | "reindexed" | "unaffected"),
    # covers_output (None when unaffected)}.
    indices: list[dict[str, Any]] = field(default_factory=list)
    runner: str = "local"  # where the copies ran: local | processes | ray | dask
    workers: int = 0  # distinct worker processes that ran tasks
    task_retries: int = 0  # task attempts lost to dead workers and run again
    # Page health (docs/how-it-works.md, Small pages): pages of the compacted columns before and
    # after (None in a dry run: the plan reads no small fragment's pages), and the column paths
    # coalesced into large pages natively / by pylance, or left made of small pages.
    pages_before: int | None = None
    pages_after: int | None = None
    columns_coalesced_native: list[str] = field(default_factory=list)
    columns_coalesced_pylance: list[str] = field(default_factory=list)
    columns_left_small: list[str] = field(default_factory=list)

    @staticmethod
    def page_fields(results: list[RewriteResult]) -> dict[str, Any]:
        """The page-health keys summed over task results."""

        def union(attr: str) -> list[str]:
            return sorted({c for r in results for c in getattr(r, attr)})

        return dict(
            pages_before=sum(r.pages_before for r in results),
            pages_after=sum(r.pages_after for r in results),
            columns_coalesced_native=union("columns_coalesced_native"),
            columns_coalesced_pylance=union("columns_coalesced_pylance"),
            columns_left_small=union("columns_left_small"),
        )

    @staticmethod
    def page_notes(results: list[RewriteResult]) -> list[SkippedFragment]:
        """A run note per reason some columns were left made of small pages."""
        left = sorted({c for r in results for c in r.columns_left_small})
        if not left:
            return []
        why = sorted({w for r in results for w in r.pages_notes}) or ["pylance's re-encode did not make them larger"]
        return [SkippedFragment(None, Reason.SMALL_PAGES, f"columns left with small pages: {', '.join(left)}: {'; '.join(why)}")]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
