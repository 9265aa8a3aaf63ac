"""Assertions shared by the test modules."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from lance_assets.cli import EXIT_ERROR


def tree_digest(root: Path | str) -> dict[str, str]:
    """Every file and directory under ``root`` with a content hash (directories as 'dir').

    Equal digests before and after an operation prove it wrote, removed and changed nothing.
    """
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def assert_one_error_line(code: int, out: str, err: str) -> None:
    """The CLI's contract for bad input: exit 2, one ``error:`` line on stderr, no traceback."""
    assert code == EXIT_ERROR == 2
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {err!r}"
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err and "Traceback" not in out
    assert out == ""
