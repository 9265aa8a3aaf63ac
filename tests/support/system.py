"""Tests that need a program from the operating system rather than from PyPI.

Outside CI such a test skips with the reason and the way to get the program (`./dev
system-packages`); in CI (``CI=true``, where `./dev test` installs them) it fails instead, so
a broken install step can never pass as a skip.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(what: str) -> NoReturn:
    """Skip (or, in CI, fail) a test because ``what`` is missing on this machine."""
    if in_ci():
        pytest.fail(f"{what} — in CI this test must run (./dev test installs the system packages there)")
    pytest.skip(f"{what} (./dev system-packages installs it)")
