"""Starting the CLI (and every sensor tick and remote task that imports the engine) stays cheap.

pyarrow pulls numpy and costs a few hundred milliseconds before any work; only the code paths
that decode Arrow deletion files, re-page legacy offsets or build bitmaps need it, so they import
it when they run. The package's public names load on first use, the CLI imports each command's
engine modules when that command runs, fsspec is imported when a store other than a plain local
path is opened and rich when a table is printed. This guards the import set in a fresh
interpreter; the time it buys is measured by benchmarks/bench_startup.py, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lance
import pyarrow as pa
import pytest

HEAVY = ("pyarrow", "numpy", "pandas", "dagster", "lance")
# What building the CLI's parser must not need: the engine's work, the stores, the terminal UI.
NOT_FOR_THE_PARSER = (*HEAVY, "fsspec", "rich", "google.protobuf", "lance_assets.engine.planning.plan", "lance_assets.io.storage")


def _loaded(code: str, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` are imported after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint('LOADED=' + ','.join(m for m in {names!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("LOADED=")][-1]
    return [m for m in line.removeprefix("LOADED=").split(",") if m]


@pytest.mark.parametrize("module", ["lance_assets", "lance_assets.cli", "lance_assets.engine"])
def test_importing_loads_no_heavy_dependency(module: str) -> None:
    assert _loaded(f"import {module}", HEAVY) == [], f"importing {module}"


def test_cli_module_and_parser_load_only_option_declarations() -> None:
    code = "import lance_assets.cli as c\nc.build_parser().format_help()"
    assert _loaded(code, NOT_FOR_THE_PARSER) == []


@pytest.mark.parametrize("argv", [["compact", "--help"], ["--version"], ["cleanup", "--no-such-flag"]])
def test_help_exits_before_loading_the_engine(argv: list[str]) -> None:
    code = f"import lance_assets.cli as c\ntry:\n    c.main({argv!r})\nexcept SystemExit:\n    pass"
    assert _loaded(code, NOT_FOR_THE_PARSER) == []


def test_public_names_still_resolve() -> None:
    """Lazy re-exports: every name in ``__all__`` is there, and is the engine's own object."""
    import lance_assets
    import lance_assets.engine as engine
    from lance_assets.engine.compaction import compact

    assert set(engine.__all__) <= set(lance_assets.__all__)
    for name in engine.__all__:
        assert getattr(lance_assets, name) is getattr(engine, name)
    assert lance_assets.compact is compact
    with pytest.raises(AttributeError):
        lance_assets.no_such_name  # noqa: B018


@pytest.mark.parametrize(
    ("argv", "check", "not_loaded"),
    [
        # inspect: OS reads and protobufs, no store library, terminal UI or arrow
        (["inspect", "--json"], "['summary']['rows'] == 30", (*HEAVY, "fsspec", "rich")),
        # compact, commit included: no store library (a tenth of a second of imports) and no
        # pyarrow (numpy is needed to re-cut pages)
        (["compact", "--json"], "['fragments_removed'] == 3", ("pyarrow", "pandas", "dagster", "lance", "fsspec")),
    ],
)
def test_cli_json_on_a_local_dataset_needs_no_fsspec_or_arrow(
    tmp_path: Path, argv: list[str], check: str, not_loaded: tuple[str, ...]
) -> None:
    uri = str(tmp_path / "d.lance")
    for i in range(3):
        lance.write_dataset(pa.table({"x": list(range(i * 10, i * 10 + 10))}), uri, mode="append" if i else "create")
    code = (
        "import contextlib, io, json\nimport lance_assets.cli as c\nout = io.StringIO()\n"
        f"with contextlib.redirect_stdout(out):\n    assert c.main({[*argv, uri]!r}) == 0\n"
        f"assert json.loads(out.getvalue()){check}"
    )
    assert _loaded(code, not_loaded) == []


@pytest.mark.parametrize("path", ["/abs/dir", "/abs/dir/", "rel/dir", "./rel", ".", "~/x", "/", "a b/c"])
def test_plain_local_root_is_what_fsspec_would_use(path: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A plain local path is opened without fsspec; its root must be fsspec's own answer."""
    import fsspec

    from lance_assets.io.storage import Storage, plain_local_root

    monkeypatch.chdir(tmp_path)
    _, fsspec_root = fsspec.core.url_to_fs(path.rstrip("/") or path)
    assert plain_local_root(path.rstrip("/") or path) == (fsspec_root.rstrip("/") or "/")
    assert Storage(path).root == (fsspec_root.rstrip("/") or "/")
    for url in ("file:///abs/dir", "memory://x", "s3://bucket/key", "simplecache::file:///x"):
        assert plain_local_root(url) is None


def test_local_listing_matches_fsspec(tmp_path: Path) -> None:
    """The OS listing a plain local path uses sees what fsspec's listing sees (files only,
    symlinks followed, sizes and mtimes)."""
    from lance_assets.io.storage import Storage

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.bin").write_bytes(b"x" * 7)
    (tmp_path / "d" / "sub").mkdir()
    (tmp_path / "d" / "sub" / "deep").write_bytes(b"y")
    os.symlink(tmp_path / "d" / "a.bin", tmp_path / "d" / "link")
    plain = Storage(str(tmp_path))
    via_fsspec = Storage(str(tmp_path), {"auto_mkdir": True})  # an option: opened through fsspec
    assert plain._fs is None and via_fsspec._fs is not None
    assert sorted(plain.list("d"), key=lambda e: e.name) == sorted(via_fsspec.list("d"), key=lambda e: e.name)
    assert {e.name for e in plain.list("d")} == {"a.bin", "link"}
    assert plain.list("missing") == [] == via_fsspec.list("missing")
    assert plain.size("d/a.bin") == 7 and plain.exists("d/link") and not plain.exists("d/nope")
    assert json.dumps([e.name for e in plain.list("d", recursive=True)])  # recursive goes through fsspec
