"""Example Dagster definitions: compact every Lance dataset under ``demo-data/datasets``.

Loaded by ``dagster dev -w workspace.yaml``; ``./dev demo`` drives the same
definitions headless. Its sensors and schedules start with the daemon
(``start_automation=True``), so within a minute of ``dagster dev`` the discovery
sensor finds the datasets, the small-fragment sensor records them, and
``demo_automation_sensor`` evaluates the compacted asset's automation condition
and launches a compaction for each dataset over the thresholds (the asset's
Automation tab shows why). Point ``LANCE_ASSETS_ROOT`` at another root (local
path or URL) to use it on real data.
"""

import os
from datetime import timedelta
from pathlib import Path

from lance_assets.dagster import build_lance_compaction_defs

ROOT = os.environ.get("LANCE_ASSETS_ROOT", str(Path(__file__).resolve().parent.parent / "demo-data" / "datasets"))

defs = build_lance_compaction_defs(
    "demo",
    root=ROOT,
    min_small_fragments=16,
    cooldown=timedelta(minutes=2),  # the demo's appends are seconds apart: let automation act again soon
    sensor_interval_seconds=30,
    cron_schedule="0 2 * * *",
    cleanup_older_than=timedelta(days=7),  # retention after each compaction, and the demo_retention job and schedule
    start_automation=True,
)
