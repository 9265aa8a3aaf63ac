"""Dagster integration: thin glue over ``lance_assets.engine``.

``build_lance_compaction_defs`` returns ready ``Definitions`` (resource,
fragment assets, compaction asset with checks, sensors, schedule, fan-out job);
``LanceCompactionComponent`` exposes the same from YAML for ``dg`` projects.
"""

from lance_assets.dagster.config import CompactionConfig
from lance_assets.dagster.definitions import LanceCompactionComponent, build_lance_compaction_defs
from lance_assets.dagster.resources import LanceDatasets, LanceRay

__all__ = ["CompactionConfig", "LanceCompactionComponent", "LanceDatasets", "LanceRay", "build_lance_compaction_defs"]
