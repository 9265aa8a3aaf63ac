"""The docs name only files that exist.

A renamed module or a moved test leaves its old path behind in prose, where nothing fails; this
test reads README.md and the docs for repository paths (``lance_assets/engine/planning/plan.py``,
``tests/engine/...``, ``benchmarks/results.md``, ``engine/committing/commit.py`` inside the package, relative
Markdown links) and fails on every one that names nothing in the checkout.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").glob("*.md"))]

#: Top-level folders of the repository, and the package's own sub-packages (which the docs name
#: without the ``lance_assets/`` prefix, as in ``engine/committing/commit_loop.py``).
_ROOTS = ("lance_assets", "tests", "benchmarks", "docs", "examples", "proto", "scripts")
_PACKAGE_DIRS = ("engine", "format", "io", "dagster", "_proto")
# A path: one of those folders, then at least one more segment; not part of a longer word, a URL
# or another path (``s3://lake/...``, ``site-packages/lance/...``).
_FIRST = "|".join(re.escape(r) for r in (*_ROOTS, *_PACKAGE_DIRS))
_PATH = re.compile(rf"(?<![\w./:-])((?:{_FIRST})/[\w.*/-]*[\w*/])")
_LINK = re.compile(r"\]\(([^)\s]+)\)")
#: Written like paths, but Dagster run-tag keys (docs/dagster.md's concurrency limits).
_TAG_KEYS = frozenset({"dagster/partition", "lance_assets/dataset"})


def _exists(path: str) -> bool:
    if "*" in path:
        return any(REPO.glob(path))
    return (REPO / path).exists()


def mentioned_paths(doc: Path) -> list[tuple[int, str, str]]:
    """(line, as written, repository path) of every path ``doc`` names."""
    found = []
    for number, line in enumerate(doc.read_text().splitlines(), start=1):
        for match in _LINK.finditer(line):
            target = match.group(1).split("#", 1)[0]
            if target and "://" not in target and not target.startswith("mailto:"):
                found.append((number, target, (doc.parent / target).resolve().relative_to(REPO).as_posix()))
        for match in _PATH.finditer(_LINK.sub("]", line)):
            written = match.group(1)
            if written in _TAG_KEYS:
                continue
            first = written.split("/", 1)[0]
            found.append((number, written, written if first in _ROOTS else f"lance_assets/{written}"))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: d.relative_to(REPO).as_posix())
def test_docs_name_only_files_that_exist(doc: Path) -> None:
    missing = [f"{doc.name}:{n}: {written}" for n, written, path in mentioned_paths(doc) if not _exists(path)]
    assert not missing, "paths the docs name that do not exist:\n" + "\n".join(missing)


def test_the_scan_finds_paths() -> None:
    """The check cannot pass by finding nothing: the docs' well-known paths are among its finds."""
    found = {path for doc in DOCS for _, _, path in mentioned_paths(doc)}
    assert {"docs/format.md", "lance_assets/engine/committing/commit_loop.py", "benchmarks/results-read-after.md"} <= found
    assert not _exists("lance_assets/engine/no_such_module.py")
