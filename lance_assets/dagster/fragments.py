"""The fragments asset: a record of a dataset's fragments, and the data version it carries.

The fragments are written by others (streaming writers, pylance jobs), so Dagster cannot make
them; what it can make is a *record* of them. Each record is a materialization of
``<name>/fragments`` (by the small-fragment sensor, by the compaction run after it commits, or
by "Materialize" in the UI, which inspects the dataset), so the UI shows the asset as present
and fresh per dataset instead of "never materialized / missing".

Its data version is the dataset's *content version*: the Lance version of the last commit that
changed rows. Commits that keep every row (a compaction's rewrite, an index build, a config
change) do not change it, so the compaction the compacted asset just ran does not make that
same asset look out of date; a writer's append does, which is the truth the UI should show.

The record also says what old versions cost: how many versions the dataset keeps and the bytes
retention would give back now (a dry run of it, with the definitions' retention settings).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import dagster as dg

from lance_assets.dagster.resources import LanceDatasets
from lance_assets.engine.dataset import Dataset
from lance_assets.engine.maintenance.cleanup import DEFAULT_OLDER_THAN, CleanupReport
from lance_assets.engine.maintenance.inspect import Inspection
from lance_assets.errors import LanceAssetsError

DATA_VERSION_TAG = "dagster/data_version"
USER_DATA_VERSION_TAG = "dagster/data_version_is_user_provided"
#: Lineage tags Dagster writes on an asset step's materialization (what staleness compares):
#: the code version and, per upstream, the data version consumed and the record it came from.
CODE_VERSION_TAG = "dagster/code_version"
INPUT_DATA_VERSION_TAG = "dagster/input_data_version"
INPUT_EVENT_POINTER_TAG = "dagster/input_event_pointer"
NULL_EVENT_POINTER = "NULL"
MAX_FRAGMENT_ROWS_SHOWN = 200
#: Transaction kinds that commit a new version without changing any row.
ROW_PRESERVING_OPERATIONS = frozenset({"rewrite", "create_index", "reserve_fragments", "update_config"})
#: How far back the content version is looked for; past it the version reached is used (an
#: older version than the truth would only make Dagster think the data changed: never hides a change).
MAX_VERSIONS_WALKED = 16


@dataclass(frozen=True)
class RetentionSettings:
    """The retention ``bytes_reclaimable`` is reckoned for: the definitions' (``cleanup_older_than``,
    ``retain_versions``) when they set a cutoff, else Lance's defaults (two weeks, keep one)."""

    older_than: timedelta = DEFAULT_OLDER_THAN
    retain_versions: int = 1

    @classmethod
    def configured(cls, cleanup_older_than: timedelta | None, retain_versions: int) -> "RetentionSettings":
        """The definitions' retention, or Lance's defaults when they configure none (no cutoff)."""
        return cls() if cleanup_older_than is None else cls(cleanup_older_than, retain_versions)


#: Lance's own retention defaults (two weeks, keep one): what ``bytes_reclaimable`` is reckoned
#: for when the definitions configure no retention.
LANCE_RETENTION = RetentionSettings()


def retention_preview(lance: LanceDatasets, partition_key: str | None, retention: RetentionSettings) -> CleanupReport | None:
    """What retention would remove now (a dry run: one listing and every manifest read), or
    None when it cannot tell (branches, an unreadable manifest...): that must not cost the record."""
    try:
        return lance.cleanup(partition_key, retention.older_than, retention.retain_versions, dry_run=True)
    except LanceAssetsError:
        return None


def content_version(lance: LanceDatasets, partition_key: str | None, latest: int) -> int:
    """The Lance version of the last commit at or before ``latest`` that changed rows.

    Walks back over the versions whose transaction keeps every row. A version without an
    inline transaction, or one already removed by retention, ends the walk (it counts as a
    change, so Dagster may see a change that was not one, never the reverse).
    """
    uri, options = lance.uri(partition_key), lance.options()
    version = latest
    for _ in range(MAX_VERSIONS_WALKED):
        if version <= 1:
            break
        try:
            txn = Dataset.open(uri, version, options).file.transaction
        except LanceAssetsError:
            break
        if txn is None or txn.WhichOneof("operation") not in ROW_PRESERVING_OPERATIONS:
            break
        version -= 1
    return version


def small_fragment_counts(physical_rows: Sequence[int], target_rows_per_fragment: int) -> tuple[int, int]:
    """(small fragments compaction can merge, lone small fragments), in manifest order.

    Compaction only merges neighbours, so a small fragment with no small neighbour (typically
    the one fragment a compaction just wrote, or a short tail after big fragments) is not
    work left behind: counting it would make every compacted dataset look unfinished.

    >>> small_fragment_counts([10, 10, 500, 10], 100)
    (2, 1)
    """
    small = [rows < target_rows_per_fragment for rows in physical_rows]
    mergeable = sum(
        1 for i, is_small in enumerate(small) if is_small and ((i > 0 and small[i - 1]) or (i + 1 < len(small) and small[i + 1]))
    )
    return mergeable, sum(small) - mergeable


def mergeable_small_bytes(report: Inspection) -> int:
    """Bytes held by the small fragments compaction can merge (the sensor's byte threshold)."""
    target = report.summary.target_rows_per_fragment
    small = [f.physical_rows < target for f in report.fragments]
    return sum(
        f.bytes
        for i, f in enumerate(report.fragments)
        if small[i] and ((i > 0 and small[i - 1]) or (i + 1 < len(small) and small[i + 1]))
    )


def health_values(
    report: Inspection, unindexed_rows: int | None = None, retention: CleanupReport | None = None
) -> dict[str, int | float]:
    """The numbers that say whether a dataset needs maintenance, by the names the fragments
    record carries them under (what the automation condition and the sensor compare with
    their thresholds: see ``triggers.CompactionTrigger``).

    ``small_pages`` only when ``report`` read page health; ``unindexed_rows`` only when given;
    ``versions`` (manifests in ``_versions/``) and ``bytes_reclaimable`` only with a retention
    dry run's report (``retention_preview``).
    """
    s = report.summary
    mergeable, lone = small_fragment_counts([f.physical_rows for f in report.fragments], s.target_rows_per_fragment)
    stored = s.rows + s.deleted_rows
    out: dict[str, int | float] = {
        "small_fragments": mergeable,
        "lone_small_fragments": lone,
        "small_fragment_bytes": mergeable_small_bytes(report),
        "deleted_rows": s.deleted_rows,
        "deleted_row_ratio": round(s.deleted_rows / stored, 6) if stored else 0.0,
    }
    if s.small_pages is not None:
        out["small_pages"] = s.small_pages
    if unindexed_rows is not None:
        out["unindexed_rows"] = unindexed_rows
    if retention is not None:
        out["versions"] = retention.versions
        out["bytes_reclaimable"] = retention.bytes
    return out


def fragment_metadata(
    report: Inspection,
    data_version: int | None = None,
    unindexed_rows: int | None = None,
    retention: CleanupReport | None = None,
) -> dict[str, Any]:
    """What the UI shows about a dataset's fragments: counts, sizes, a histogram and a table.

    ``small_fragments`` counts the small fragments compaction can merge; ``lone_small_fragments``
    the ones it cannot (no small neighbour). The health numbers (``health_values``) are plotted
    over time on the asset's page and are what automation decides on.
    """
    s = report.summary
    health = health_values(report, unindexed_rows, retention)
    rows = [
        dg.TableRecord(
            {"id": f.id, "physical_rows": f.physical_rows, "deleted_rows": f.deleted_rows, "files": f.files, "bytes": f.bytes}
        )
        for f in report.fragments[:MAX_FRAGMENT_ROWS_SHOWN]
    ]
    histogram = "\n".join(["| size | fragments |", "|---|---|"] + [f"| {k} | {v} |" for k, v in s.histogram.items()])
    meta: dict[str, Any] = {
        "lance_version": dg.MetadataValue.int(report.version),
        "storage_version": report.storage_version,
        "fragments": dg.MetadataValue.int(s.fragments),
        "target_rows_per_fragment": dg.MetadataValue.int(s.target_rows_per_fragment),
        "rows": dg.MetadataValue.int(s.rows),
        "bytes": dg.MetadataValue.int(s.bytes),
        "data_files": dg.MetadataValue.int(s.data_files),
        **{
            name: dg.MetadataValue.float(value) if isinstance(value, float) else dg.MetadataValue.int(value)
            for name, value in health.items()
        },
        "size_histogram": dg.MetadataValue.md(histogram),
        "fragment_table": dg.MetadataValue.table(
            rows,
            schema=dg.TableSchema(
                columns=[
                    dg.TableColumn("id", "int"),
                    dg.TableColumn("physical_rows", "int"),
                    dg.TableColumn("deleted_rows", "int"),
                    dg.TableColumn("files", "int"),
                    dg.TableColumn("bytes", "int"),
                ]
            ),
        ),
        "uri": dg.MetadataValue.path(report.uri),
    }
    if data_version is not None:
        meta["content_version"] = dg.MetadataValue.int(data_version)
    return meta


def fragments_record(
    asset_key: dg.AssetKey,
    lance: LanceDatasets,
    report: Inspection,
    partition_key: str | None,
    extra_metadata: dict[str, Any] | None = None,
    *,
    retention: RetentionSettings,
) -> dg.AssetMaterialization:
    """A record of the fragments as ``report`` saw them, with the content version as data version,
    the rows no index covers yet (one more manifest read) and the versions kept with the bytes
    ``retention`` would free (a dry run: a listing and every manifest; records are made once per version)."""
    version = content_version(lance, partition_key, report.version)
    try:
        unindexed: int | None = lance.index_status(partition_key)[0]
    except LanceAssetsError:  # an unreadable index must not cost the record (and the sensor's tick)
        unindexed = None
    preview = retention_preview(lance, partition_key, retention)
    return dg.AssetMaterialization(
        asset_key=asset_key,
        partition=partition_key,
        metadata={**fragment_metadata(report, version, unindexed, preview), **(extra_metadata or {})},
        tags={DATA_VERSION_TAG: str(version), USER_DATA_VERSION_TAG: "true"},
    )


def lineage_tags(
    instance: dg.DagsterInstance,
    fragments_key: dg.AssetKey,
    partition_key: str | None,
    run_id: str,
    consumed_version: int,
    data_version: int,
) -> dict[str, str]:
    """The tags an asset step gives its materialization, for a materialization an op reports.

    An ``@asset`` step records which upstream record it consumed (its data version and storage
    id) and its code version; an op's ``AssetMaterialization`` records none of it, so Dagster
    would call the result "Unsynced" at once. The record consumed is the latest fragments record
    of the partition (taken before this run records a new one); without one, the content version
    the run read (``consumed_version``) with no pointer, as Dagster writes for a never-recorded
    upstream. The code version is the run id, as for an asset without ``code_version``.
    """
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=fragments_key, asset_partitions=[partition_key] if partition_key is not None else None),
        limit=1,
    ).records
    consumed = records[0].asset_materialization if records else None
    version = consumed.tags.get(DATA_VERSION_TAG) if consumed is not None and consumed.tags else None
    upstream = fragments_key.to_user_string()
    return {
        CODE_VERSION_TAG: run_id,
        f"{INPUT_DATA_VERSION_TAG}/{upstream}": version or str(consumed_version),
        f"{INPUT_EVENT_POINTER_TAG}/{upstream}": str(records[0].storage_id) if version else NULL_EVENT_POINTER,
        DATA_VERSION_TAG: str(data_version),
        USER_DATA_VERSION_TAG: "true",
    }


def build_fragments_asset(
    asset_key: dg.AssetKey,
    partitions_def: dg.PartitionsDefinition | None,
    *,
    resource_key: str,
    group_name: str | None,
    target_rows_per_fragment: int,
    retention: RetentionSettings = LANCE_RETENTION,
) -> dg.AssetsDefinition:
    """``<name>/fragments``: materializing it inspects the dataset (manifest reads only) and records it,
    with what ``retention`` would free now (default: Lance's retention defaults)."""

    @dg.asset(
        key=asset_key,
        partitions_def=partitions_def,
        group_name=group_name,
        kinds={"lance"},
        required_resource_keys={resource_key},
        description=(
            "The Lance dataset's fragments as last recorded: by the small-fragment sensor (once per Lance version), "
            "by each compaction after it commits, or by materializing this asset (reads manifests only). Its data "
            "version is the last Lance version that changed rows, so compaction and index builds keep it. Its health "
            "numbers (small fragments, small pages, deleted-row ratio, unindexed rows) are what automation decides on; "
            "versions (manifests kept) and bytes_reclaimable (what version retention would free now, reckoned with "
            f"older_than={retention.older_than}, retain_versions={retention.retain_versions}) say what old versions cost. "
            "The numbers are plotted over time on this page."
        ),
    )
    def _fragments(context: dg.AssetExecutionContext) -> dg.MaterializeResult[None]:
        lance: LanceDatasets = getattr(context.resources, resource_key)
        key = context.partition_key if partitions_def is not None else None
        report = lance.inspect(key, target_rows_per_fragment, pages=True)  # asked for: worth reading page health
        version = content_version(lance, key, report.version)
        unindexed, _, _ = lance.index_status(key)
        preview = retention_preview(lance, key, retention)
        return dg.MaterializeResult(
            metadata=fragment_metadata(report, version, unindexed, preview), data_version=dg.DataVersion(str(version))
        )

    return _fragments
