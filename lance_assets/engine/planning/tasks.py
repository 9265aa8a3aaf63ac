"""A compaction plan as data: its tasks, the files each writes, the fragments left alone and why.

Small and serialisable (``CompactionPlan.to_json``), so a plan made by a sensor or a dry run
can be shipped to other machines and run there; ``engine.planning.plan`` makes one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from lance_assets._proto import table_pb2
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.report import SkippedFragment


@dataclass(frozen=True)
class OutputFile:
    """One data file a task will write: the fragments copied into it, in order."""

    fragment_ids: tuple[int, ...]
    rows: int
    bytes: int
    deletions: bool = False  # carries a deletion file (an input has deleted rows; binary copy keeps them)


@dataclass(frozen=True)
class CompactionTask:
    """Adjacent fragments merged as one Rewrite group."""

    task_id: int
    fragment_ids: tuple[int, ...]
    rows: int
    bytes: int
    outputs: tuple[OutputFile, ...]
    files: int = 0  # data and deletion files the task's fragments hold (what a commit removes)
    reencode: bool = False  # written by pylance's re-encode (deleted rows dropped), not binary copy


@dataclass(frozen=True)
class PlanSplit:
    """Two adjacent fragments that would have shared a bin but may not share a file, and why."""

    left_fragment_id: int
    right_fragment_id: int
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class CompactionPlan:
    """Everything ``execute_task`` and ``commit_compaction`` need, small enough to ship anywhere."""

    uri: str
    read_version: int
    storage_version: str
    tasks: tuple[CompactionTask, ...]
    skipped: tuple[SkippedFragment, ...]
    options: CompactionOptions
    splits: tuple[PlanSplit, ...] = ()
    #: Fragments merged with a caveat (e.g. deleted rows kept because nothing can re-encode them).
    notes: tuple[SkippedFragment, ...] = ()
    #: The filesystem options the dataset was opened with (credentials, endpoint): tasks run on
    #: other machines open it with them. Never serialised (they may hold secrets).
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def bytes_to_read(self) -> int:
        return sum(t.bytes for t in self.tasks)

    @property
    def fragments_to_compact(self) -> int:
        return sum(len(t.fragment_ids) for t in self.tasks)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["options"] = self.options.to_dict()
        out.pop("storage_options")  # may hold secrets
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any], storage_options: dict[str, Any] | None = None) -> CompactionPlan:
        options = CompactionOptions.from_dict(data["options"])
        tasks = tuple(
            CompactionTask(
                task_id=t["task_id"],
                fragment_ids=tuple(t["fragment_ids"]),
                rows=t["rows"],
                bytes=t["bytes"],
                outputs=tuple(
                    OutputFile(tuple(o["fragment_ids"]), o["rows"], o["bytes"], o.get("deletions", False)) for o in t["outputs"]
                ),
                files=t.get("files", 0),
                reencode=t.get("reencode", False),
            )
            for t in data["tasks"]
        )
        skipped = tuple(SkippedFragment.from_dict(s) for s in data["skipped"])
        splits = tuple(PlanSplit(**s) for s in data.get("splits", ()))
        notes = tuple(SkippedFragment.from_dict(s) for s in data.get("notes", ()))
        plan = cls(data["uri"], data["read_version"], data["storage_version"], tasks, skipped, options, splits, notes)
        return replace(plan, storage_options=dict(storage_options or {}))


def fragment_file_count(fragment: table_pb2.DataFragment) -> int:
    """Data and deletion files of a fragment: what a Rewrite removes or adds (Lance's metrics count both)."""
    return len(fragment.files) + (1 if fragment.HasField("deletion_file") else 0)
