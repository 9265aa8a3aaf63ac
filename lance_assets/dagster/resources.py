"""The resource that says where Lance datasets live and opens them for the engine."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from lance_assets.engine.compaction import compact
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.indices import index_coverage, reuse_versions
from lance_assets.engine.maintenance.cleanup import CleanupReport, bytes_on_disk, cleanup
from lance_assets.engine.maintenance.index_upkeep import IndexUpkeepReport, maintain_indices
from lance_assets.engine.maintenance.inspect import Inspection, inspect_dataset
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

    The one place a Dagster deployment says where its datasets live and with which
    credentials, so assets, checks, sensors and schedules all open them alike; its methods
    are thin calls into the engine with those settings applied.

    ``uri_template`` maps a partition key to a dataset URI; the default makes
    ``<root>/<key>.lance``. For an unpartitioned setup set ``uri_template`` to
    the dataset's URI (no placeholder). ``storage_options`` go to fsspec; use
    ``dg.EnvVar`` for secrets so they never land in run config.

    Args:
        root: Local path or URL (``s3://``, ``gs://``, ``az://``, ``memory://``) holding the datasets.
        uri_template: Dataset URI for a partition key (``{root}`` and ``{partition_key}``).
        storage_options: fsspec storage options (credentials, endpoint); values may be JSON.

    Examples:
        >>> import dagster as dg
        >>> lance = LanceDatasets(
        ...     root="s3://bucket/lance",
        ...     storage_options={"aws_access_key_id": dg.EnvVar("AWS_ACCESS_KEY_ID")},
        ... )
        >>> lance.uri("events")
        's3://bucket/lance/events.lance'
        >>> LanceDatasets(root="/data", uri_template="/data/events.lance").partitioned
        False
    """

    root: str = Field(description="Local path or URL (s3://, gs://, az://, memory://) holding the datasets.")
    uri_template: str = Field(default="{root}/{partition_key}.lance", description="Dataset URI for a partition key.")
    storage_options: dict[str, str] = Field(default_factory=dict, description="fsspec storage options (credentials, endpoint).")

    @property
    def partitioned(self) -> bool:
        """Whether ``uri_template`` holds a partition key, i.e. one dataset per key."""
        return PARTITION_PLACEHOLDER in self.uri_template

    def options(self) -> dict[str, Any]:
        """Storage options with JSON-looking values decoded (e.g. client_kwargs objects).

        Run config holds strings only, so structured options arrive as JSON text.

        Returns:
            The options as the engine and fsspec take them.

        Examples:
            >>> LanceDatasets(root="s3://b", storage_options={"client_kwargs": '{"region_name": "eu-west-1"}'}).options()
            {'client_kwargs': {'region_name': 'eu-west-1'}}
        """
        return {key: decode_option_value(value) for key, value in self.storage_options.items()}

    def uri(self, partition_key: str | None = None) -> str:
        """The URI of the dataset of ``partition_key``.

        Args:
            partition_key: The partition's key; ignored when the resource is not partitioned.

        Returns:
            ``uri_template`` filled in.

        Raises:
            DagsterInvariantViolationError: The resource is partitioned and no key was given.

        Examples:
            >>> LanceDatasets(root="s3://bucket/lance/").uri("events")
            's3://bucket/lance/events.lance'
        """
        root = self.root.rstrip("/")
        if not self.partitioned:
            return self.uri_template.format(root=root)
        if partition_key is None:
            raise dg.DagsterInvariantViolationError("this LanceDatasets resource is partitioned: a partition key is required")
        return self.uri_template.format(root=root, partition_key=partition_key)

    def discover(self) -> list[str]:
        """Partition keys of the datasets that exist under ``root`` (those with a ``_versions/``).

        Lets a discovery sensor add a dynamic partition for every dataset someone creates,
        without a list kept by hand.

        Returns:
            The keys, sorted; empty when the resource is not partitioned.

        Raises:
            DagsterInvariantViolationError: The partition key is not in the last path segment
                of ``uri_template`` (one listing of the parent could not find the datasets).

        Examples:
            >>> LanceDatasets(root="s3://bucket/lance").discover()
            ['clicks', 'events']
        """
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

    def inspect(self, partition_key: str | None, target_rows_per_fragment: int, *, pages: bool = False) -> Inspection:
        """The partition's dataset at its latest version (see ``engine.inspect_dataset``).

        Args:
            partition_key: The partition's key (None when not partitioned).
            target_rows_per_fragment: Fragments with fewer rows count as small.
            pages: Also read every data file's page layout (small pages); costs one metadata
                read per data file, so only when a small-pages threshold or a user asks for it.

        Returns:
            Inventory and fragmentation summary, as sensors and asset metadata report them.

        Raises:
            LanceAssetsError: Not a dataset, unsupported, or a storage failure (a typed subclass).

        Examples:
            >>> lance.inspect("events", 1_000_000).summary.small_fragments
        """
        return inspect_dataset(
            self.uri(partition_key),
            target_rows_per_fragment=target_rows_per_fragment,
            storage_options=self.options(),
            pages=pages,
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
        """Compact the partition's dataset with this resource's storage options.

        Args:
            partition_key: The partition's key (None when not partitioned).
            options: The engine options (from the run config); their storage options are
                replaced by the resource's, so credentials never come from run config.
            progress: Called with the number of bytes copied.
            runner: Where the copy tasks run (default: this process).
            on_task_done: Called with each task's result as it arrives.

        Returns:
            The compaction report (see ``engine.compact``).

        Raises:
            CommitConflictError: Another writer committed an incompatible change meanwhile.
            LanceAssetsError: Not a dataset, unsupported, or a storage failure (a typed subclass).

        Examples:
            >>> from lance_assets.engine import CompactionOptions
            >>> lance.compact("events", CompactionOptions(target_rows_per_fragment=1_000_000)).version
        """
        return compact(
            self.uri(partition_key),
            options,
            storage_options=self.options(),
            progress=progress,
            runner=runner,
            on_task_done=on_task_done,
        )

    def cleanup(
        self, partition_key: str | None, older_than: timedelta | float, retain_versions: int, *, dry_run: bool = False
    ) -> CleanupReport:
        """Version retention on the partition's dataset (see ``lance_assets.engine.maintenance.cleanup``).

        Compaction leaves the replaced files to old versions; retention is what gives the
        space back. With ``dry_run`` nothing is removed: the report says what would go (the
        fragments record's ``bytes_reclaimable``); it lists the dataset and reads every manifest.

        Args:
            partition_key: The partition's key (None when not partitioned).
            older_than: Remove versions older than this (a number of seconds is still read, for one
                release, with a DeprecationWarning).
            retain_versions: The newest versions always kept, whatever their age.
            dry_run: Report what would be removed, remove nothing.

        Returns:
            The versions and files removed (or, with ``dry_run``, that would be), and the bytes.

        Raises:
            LanceAssetsError: Not a dataset, or a storage failure (a typed subclass).

        Examples:
            >>> lance.cleanup("events", older_than=timedelta(days=7), retain_versions=1).bytes
            >>> lance.cleanup("events", timedelta(days=7), 1, dry_run=True).bytes  # what it would free
        """
        if not isinstance(older_than, timedelta):
            warnings.warn(
                "LanceDatasets.cleanup(older_than=<seconds>) is deprecated: pass a datetime.timedelta",
                DeprecationWarning,
                stacklevel=2,
            )
            older_than = timedelta(seconds=older_than)
        return cleanup(
            self.uri(partition_key),
            older_than=older_than,
            retain_versions=retain_versions,
            dry_run=dry_run,
            storage_options=self.options(),
        )

    def index_status(self, partition_key: str | None) -> tuple[int, int, bool]:
        """(unindexed rows over all user indices, fragment-reuse versions, has user indices).

        What the compaction asset records before and after its index upkeep, read from the
        manifest alone.

        Args:
            partition_key: The partition's key (None when not partitioned).

        Returns:
            The three numbers, in that order.

        Raises:
            LanceAssetsError: Not a dataset, or a storage failure (a typed subclass).

        Examples:
            >>> unindexed, reuse_versions, has_indices = lance.index_status("events")
        """
        ds = Dataset.open(self.uri(partition_key), storage_options=self.options())
        versions = reuse_versions(ds)  # read once: coverage applies them too
        coverage = index_coverage(ds, versions)
        return sum(c.unindexed_rows for c in coverage), len(versions), bool(coverage)

    def maintain_indices(self, partition_key: str | None) -> IndexUpkeepReport:
        """pylance's ``optimize_indices`` (when installed), then the reuse-index trim.

        Args:
            partition_key: The partition's key (None when not partitioned).

        Returns:
            What the upkeep did (see ``engine.maintain_indices``).

        Raises:
            CommitConflictError: Other writers kept winning the race to commit the trim.
            LanceAssetsError: Storage or corruption errors (a typed subclass).

        Examples:
            >>> lance.maintain_indices("events").reuse_versions_after
        """
        return maintain_indices(self.uri(partition_key), self.options())

    def bytes_on_disk(self, partition_key: str | None) -> int:
        """Bytes the partition's dataset takes on its store: data, deletions, transactions,
        manifests and indices (what retention can give back, for plots over time).

        Args:
            partition_key: The partition's key (None when not partitioned).

        Returns:
            The total in bytes.

        Raises:
            LanceAssetsError: Not a dataset, or a storage failure (a typed subclass).

        Examples:
            >>> lance.bytes_on_disk("events")
        """
        return bytes_on_disk(self.uri(partition_key), self.options())

    def append(self, partition_key: str | None, data: Any, **write_kwargs: Any) -> int:
        """Append a pandas DataFrame or pyarrow Table (needs the ``reencode`` extra: pylance).

        For ingestion assets that write the small fragments compaction later merges; the
        dataset is created by the first append. Lance appends only an identical schema, so a
        batch whose types differ losslessly (pandas' large strings) is cast to the dataset's.

        Args:
            partition_key: The partition's key (None when not partitioned).
            data: A pandas DataFrame or a pyarrow Table.
            **write_kwargs: Passed to ``lance.write_dataset`` (e.g. ``data_storage_version``).

        Returns:
            The number of rows appended.

        Raises:
            DagsterInvariantViolationError: pylance is not installed.

        Examples:
            >>> import pandas as pd
            >>> lance.append("events", pd.DataFrame({"id": [1, 2, 3]}))
            3
        """
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
