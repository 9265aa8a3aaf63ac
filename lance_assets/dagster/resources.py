"""The resource that says where Lance datasets live and opens them for the engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from lance_assets.engine.cleanup import CleanupReport, bytes_on_disk, cleanup
from lance_assets.engine.compaction import compact
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.index_upkeep import IndexUpkeepReport, maintain_indices
from lance_assets.engine.indices import index_coverage, reuse_version_count
from lance_assets.engine.inspect import Inspection, inspect_dataset
from lance_assets.engine.options import CompactionOptions
from lance_assets.engine.report import CompactionReport, ProgressCallback, RewriteResult
from lance_assets.engine.runners import RayRunner, TaskRunner
from lance_assets.io import Storage
from lance_assets.io.storage import decode_option_value

PARTITION_PLACEHOLDER = "{partition_key}"

if TYPE_CHECKING:
    # Each resource is its own value (what Dagster hands an asset). Only type checkers see the
    # type argument: subscripting at run time would put an extra parametrised pydantic class
    # between ours and Dagster's, which its documentation never does.
    _LanceDatasetsBase = dg.ConfigurableResource["LanceDatasets"]
    _LanceRayBase = dg.ConfigurableResource["LanceRay"]
else:
    _LanceDatasetsBase = _LanceRayBase = dg.ConfigurableResource


class LanceDatasets(_LanceDatasetsBase):
    """Lance datasets under one root, one per partition key (or a single dataset).

    ``uri_template`` maps a partition key to a dataset URI; the default makes
    ``<root>/<key>.lance``. For an unpartitioned setup set ``uri_template`` to
    the dataset's URI (no placeholder). ``storage_options`` go to fsspec; use
    ``dg.EnvVar`` for secrets so they never land in run config.
    """

    root: str = Field(description="Local path or URL (s3://, gs://, az://, memory://) holding the datasets.")
    uri_template: str = Field(default="{root}/{partition_key}.lance", description="Dataset URI for a partition key.")
    storage_options: dict[str, str] = Field(default_factory=dict, description="fsspec storage options (credentials, endpoint).")

    @property
    def partitioned(self) -> bool:
        return PARTITION_PLACEHOLDER in self.uri_template

    def options(self) -> dict[str, Any]:
        """Storage options with JSON-looking values decoded (e.g. client_kwargs objects)."""
        return {key: decode_option_value(value) for key, value in self.storage_options.items()}

    def uri(self, partition_key: str | None = None) -> str:
        root = self.root.rstrip("/")
        if not self.partitioned:
            return self.uri_template.format(root=root)
        if partition_key is None:
            raise dg.DagsterInvariantViolationError("this LanceDatasets resource is partitioned: a partition key is required")
        return self.uri_template.format(root=root, partition_key=partition_key)

    def discover(self) -> list[str]:
        """Partition keys of the datasets that exist under ``root`` (those with a ``_versions/``)."""
        if not self.partitioned:
            return []
        prefix, _, suffix = self.uri_template.format(root=self.root.rstrip("/"), partition_key="\0").partition("\0")
        parent, _, name_prefix = prefix.rpartition("/")
        if "/" in suffix:
            raise dg.DagsterInvariantViolationError(
                "dataset discovery needs the partition key in the last path segment of uri_template"
            )
        storage = Storage(parent, self.options())
        keys = []
        for info in storage.fs.ls(storage.root, detail=True):
            name = info["name"].rstrip("/").rsplit("/", 1)[-1]
            if info.get("type") != "directory" or not name.startswith(name_prefix) or not name.endswith(suffix):
                continue
            key = name[len(name_prefix) : len(name) - len(suffix) if suffix else None]
            if key and storage.fs.exists(f"{storage.root}/{name}/_versions"):
                keys.append(key)
        return sorted(keys)

    def inspect(self, partition_key: str | None, target_rows_per_fragment: int) -> Inspection:
        return inspect_dataset(
            self.uri(partition_key), target_rows_per_fragment=target_rows_per_fragment, storage_options=self.options()
        )

    def compact(
        self,
        partition_key: str | None,
        options: CompactionOptions,
        progress: ProgressCallback | None = None,
        *,
        runner: TaskRunner | None = None,
        on_task_done: Callable[[RewriteResult], None] | None = None,
    ) -> CompactionReport:
        return compact(
            self.uri(partition_key),
            replace(options, storage_options=self.options()),
            progress=progress,
            runner=runner,
            on_task_done=on_task_done,
        )

    def cleanup(self, partition_key: str | None, older_than: float, retain_versions: int) -> CleanupReport:
        """Version retention on the partition's dataset (see ``lance_assets.engine.cleanup``)."""
        return cleanup(
            self.uri(partition_key), older_than=older_than, retain_versions=retain_versions, storage_options=self.options()
        )

    def index_status(self, partition_key: str | None) -> tuple[int, int, bool]:
        """(unindexed rows over all user indices, fragment-reuse versions, has user indices)."""
        ds = Dataset.open(self.uri(partition_key), storage_options=self.options())
        coverage = index_coverage(ds)
        return sum(c.unindexed_rows for c in coverage), reuse_version_count(ds), bool(coverage)

    def maintain_indices(self, partition_key: str | None) -> IndexUpkeepReport:
        """pylance's ``optimize_indices`` (when installed), then the reuse-index trim."""
        return maintain_indices(self.uri(partition_key), self.options())

    def bytes_on_disk(self, partition_key: str | None) -> int:
        return bytes_on_disk(self.uri(partition_key), self.options())

    def append(self, partition_key: str | None, data: Any, **write_kwargs: Any) -> int:
        """Append a pandas DataFrame or pyarrow Table (needs the ``reencode`` extra: pylance)."""
        try:
            import lance
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise dg.DagsterInvariantViolationError(
                "writing Lance data needs pylance: pip install 'lance_assets[reencode]'"
            ) from exc
        import pyarrow as pa

        table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
        uri = self.uri(partition_key)
        exists = Storage(uri, self.options()).exists("_versions")
        if exists:
            # Lance appends only an identical schema; pandas (3.x) turns str columns into large_string,
            # so line the batch up with the dataset's own types when a lossless cast does it.
            target = lance.dataset(uri, storage_options=self.storage_options or None).schema
            if sorted(table.schema.names) == sorted(target.names) and not table.schema.equals(target):
                try:
                    table = table.select(target.names).cast(target)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
                    pass  # not castable: Lance reports the mismatch itself
        lance.write_dataset(
            table, uri, mode="append" if exists else "create", storage_options=self.storage_options or None, **write_kwargs
        )
        rows: int = table.num_rows
        return rows


class LanceRay(_LanceRayBase):
    """The Ray cluster a compaction's copy tasks run on (``runner="ray"``); the compaction step
    itself plans and commits in the Dagster run's process.

    Every Ray worker needs ``lance_assets`` installed and access to the datasets (the
    ``LanceDatasets`` storage options travel with each task); none needs Dagster's database.
    """

    address: str | None = Field(
        default=None,
        description="Ray address (e.g. ray://head:10001 or auto); unset: the connected cluster, else a local one for the run.",
    )
    max_retries: int = Field(default=3, description="Times a task whose worker died is submitted again.")
    num_cpus: float = Field(default=1.0, description="CPUs Ray reserves per copy task.")

    def runner(self) -> RayRunner:
        return RayRunner(self.address, self.max_retries, self.num_cpus)
