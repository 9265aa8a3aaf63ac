"""Shared fixtures: datasets are built once per session and copied per test."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import factory


@pytest.fixture(scope="session")
def dataset_cache(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """``build(shape, version)`` -> a pristine dataset path, built at most once per session."""
    root = tmp_path_factory.mktemp("datasets")
    built: dict[tuple[str, str], Path] = {}

    def build(shape: str, version: str) -> Path:
        key = (shape, version)
        if key not in built:
            path = root / f"{shape}-{version}.lance"
            factory.SHAPES[shape](path, version)
            built[key] = path
        return built[key]

    return build


@pytest.fixture
def dataset_copy(dataset_cache: Callable[[str, str], Path], tmp_path: Path) -> Callable[[str, str], Path]:
    """``copy(shape, version)`` -> a private copy a test may modify or corrupt."""

    def copy(shape: str, version: str) -> Path:
        dst = tmp_path / f"{shape}-{version}.lance"
        shutil.copytree(dataset_cache(shape, version), dst)
        return dst

    return copy
