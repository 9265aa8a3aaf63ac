"""Fixtures of the Dagster-layer tests: a throwaway Dagster instance and a dataset root."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    """An ephemeral-on-disk instance (SQLite run/event/schedule storage in a temp dir)."""
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A folder holding one Lance dataset per partition key (``<key>.lance``)."""
    path = tmp_path / "datasets"
    path.mkdir()
    return path
