"""The installed environment is the one pyproject.toml asks for.

A bare requirement once let the resolver pair a 2026 dask with a 2021 distributed, and the
failures showed up far away (an ImportError inside dask). These tests fail at the cause instead:
every requirement of the package and of the extras the test suite is run with must be met by
what is installed, and uv.lock must agree with pyproject.toml.
"""

from __future__ import annotations

import importlib.metadata as md
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
EXTRAS = ("test", "bench")  # what `./dev` installs


def _declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in EXTRAS:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


@pytest.mark.parametrize("req", _declared(), ids=str)
def test_installed_version_meets_the_declared_range(req: Requirement) -> None:
    if req.marker is not None and not req.marker.evaluate():
        pytest.skip(f"{req} does not apply here")
    try:
        installed = md.version(req.name)
    except md.PackageNotFoundError:
        pytest.fail(f"{req.name} is declared ({req}) but not installed: run ./dev setup")
    assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed} is outside {req}"


def test_every_direct_dependency_has_a_floor() -> None:
    """A name without a lower bound lets a resolver fall back to any release, however old."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    every = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    bare = [r for r in every if not any(s.operator in (">=", "==", "~=", ">") for s in Requirement(r).specifier)]
    assert not bare, f"requirements without a floor: {bare}"


@pytest.mark.parametrize("name", ["dask", "distributed", "s3fs"])
def test_packages_that_once_resolved_to_ancient_releases_meet_their_floor(name: str) -> None:
    floors = [r for r in _declared() if r.name == name]
    assert floors, f"{name} must be declared with a floor in the test extra"
    installed = md.version(name)
    for req in floors:
        assert req.specifier.contains(installed), f"{name} {installed} is below {req}"


def test_lock_matches_installed_versions() -> None:
    """`./dev` installs from uv.lock: what is installed is what the lock says."""
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    locked: dict[str, set[str]] = {}  # a package may be locked at one version per Python it forks on
    for p in lock["package"]:
        if "version" in p:
            locked.setdefault(p["name"], set()).add(p["version"])
    wrong = {}
    for dist in md.distributions():
        name = dist.metadata["Name"].lower().replace("_", "-")
        if name in locked and name != "lance-assets" and dist.version not in locked[name]:
            wrong[name] = (dist.version, sorted(locked[name]))
    assert not wrong, f"installed versions differ from uv.lock (installed, locked): {wrong}"
