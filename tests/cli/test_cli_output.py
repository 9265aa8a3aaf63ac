"""What every command prints, through the installed console script: sizes in binary units
(the progress bar too, which ends at 100 %), counts that agree with their noun, ``--version``,
a mistyped flag under its subcommand's usage, and a quiet end when the reader of a pipe goes away."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import lance
import pytest

from lance_assets.cli import EXIT_BROKEN_PIPE, count, human_bytes
from tests.support import factory
from tests.support.cli import COMMAND, WIDE
from tests.support.cli import run_cli as cli

Copy = Callable[[str, str], Path]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
DECIMAL_UNITS = re.compile(r"\d\s?(kB|MB|GB|TB)\b")


def flat(text: str) -> str:
    return " ".join(text.split())


# --- units and plurals -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (5 * 2**20, "5.0 MiB"), (3 * 2**30, "3.0 GiB")],
)
def test_sizes_are_binary(n: int, text: str) -> None:
    assert human_bytes(n) == text


@pytest.mark.parametrize(("n", "text"), [(0, "0 tasks"), (1, "1 task"), (2, "2 tasks"), (1234, "1,234 tasks")])
def test_counts_agree_with_their_noun(n: int, text: str) -> None:
    assert count(n, "task") == text


def _singular_mistakes(text: str) -> list[str]:
    """``1 fragments``, ``1 rows``: a lone 1 (not part of 21, 1.5 or 1,000) before a plural."""
    return re.findall(r"(?<![\d.,])1 (?:[a-z-]+ )?(?:fragments|files|tasks|rows|versions|uploads|ones)\b", text)


def test_no_plural_after_one(tmp_path: Path) -> None:
    """Every text output on datasets whose counts are 1: one task, one old version, one file, ..."""
    path = tmp_path / "one.lance"
    factory.appends(path, "2.1", [1, 1])  # two fragments of one row: one task of one output
    outputs = [cli("compact", str(path), "--dry-run"), cli("compact", str(path))]
    outputs.append(cli("inspect", str(path), "--target-rows-per-fragment", "1"))
    outputs.append(cli("cleanup", str(path), "--older-than", "0s", "--dry-run"))
    for proc in outputs:
        assert proc.returncode == 0, proc.stderr
    texts = [flat(p.stdout) for p in outputs]
    assert "1 task would merge 2 fragments into 1" in texts[0]
    assert "2 fragments -> 1" in texts[1] and "2 rows" in texts[1]
    assert "in 1 fragment," in texts[2] and "1 data file," in texts[2]
    assert "would remove 2 old versions, kept 1" in texts[3]
    for text in texts:
        assert _singular_mistakes(text) == [], text


def test_cleanup_text_of_one_version(tmp_path: Path) -> None:
    path = tmp_path / "two.lance"
    factory.appends(path, "2.1", [3, 4])
    proc = cli("cleanup", str(path), "--older-than", "0s", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "would remove 1 old version, kept 1" in flat(proc.stdout)
    assert _singular_mistakes(flat(proc.stdout)) == []


def _run_in_terminal(argv: list[str]) -> str:
    """The output of the console script under a pseudo-terminal (where the progress bar shows),
    control sequences removed."""
    master, child = pty.openpty()
    proc = subprocess.Popen([*COMMAND, *argv], stdin=child, stdout=child, stderr=child, env={**WIDE, "TERM": "xterm-256color"})
    os.close(child)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0
    return ANSI.sub("", b"".join(chunks).decode("utf-8", "replace"))


def test_progress_bar_speaks_binary_units_and_ends_full(dataset_copy: Copy) -> None:
    path = dataset_copy("appends", "2.2")
    planned = json.loads(cli("compact", str(path), "--dry-run", "--json").stdout)["bytes_read"]
    want = lance.dataset(str(path)).to_table().to_pylist()
    screen = _run_in_terminal(["compact", str(path)])
    assert DECIMAL_UNITS.search(screen) is None, screen
    percents = [int(p) for p in re.findall(r"(\d+)%", screen)]
    assert percents and percents[-1] == 100, screen  # the last frame, drawn as the bar stops
    assert percents == sorted(percents)
    assert f"{human_bytes(planned)}/{human_bytes(planned)}" in screen  # all the plan's bytes, in KiB
    assert "committed version" in screen and "KiB" in screen
    assert lance.dataset(str(path)).to_table().to_pylist() == want


# --- version and usage -------------------------------------------------------------------------------
def test_version() -> None:
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout == f"lance-assets {version('lance_assets')}\n"


def test_version_does_not_hide_inspect_version(dataset_cache: Callable[[str, str], Path]) -> None:
    """``inspect --version N`` still picks a dataset version."""
    proc = cli("inspect", str(dataset_cache("appends", "2.1")), "--version", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["version"] == 2


@pytest.mark.parametrize("command", ["inspect", "compact", "cleanup"])
@pytest.mark.parametrize("mistake", [["--no-such-flag"], ["--no-such-flag", "7"], ["extra-positional"]])
def test_usage_error_shows_the_subcommands_usage(dataset_copy: Copy, command: str, mistake: list[str]) -> None:
    path = dataset_copy("appends", "2.1")
    proc = cli(command, str(path), *mistake)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith(f"usage: lance-assets {command} ")
    assert lines[-1] == f"lance-assets {command}: error: unrecognized arguments: {' '.join(mistake)}"


def test_missing_argument_shows_the_subcommands_usage() -> None:
    proc = cli("cleanup")
    assert proc.returncode == 2 and proc.stderr.startswith("usage: lance-assets cleanup ")


# --- a reader that goes away --------------------------------------------------------------------------
def _with_closed_reader(argv: list[str]) -> tuple[int, str]:
    """Run with stdout a pipe whose reading end is already closed: the first write fails, as it
    does when ``head`` has read its lines and left."""
    proc = subprocess.Popen([*COMMAND, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=WIDE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    with proc.stderr:
        err = proc.stderr.read().decode()
    return proc.wait(timeout=180), err


PIPED = {
    "inspect-json": ["inspect", "--json"],
    "inspect-text": ["inspect"],
    "compact-json": ["compact", "--dry-run", "--json"],
    "compact-text": ["compact", "--dry-run"],
    "cleanup-json": ["cleanup", "--older-than", "0s", "--dry-run", "--json"],
    "cleanup-text": ["cleanup", "--older-than", "0s", "--dry-run"],
}


@pytest.mark.parametrize("name", sorted(PIPED))
def test_closed_pipe_ends_quietly(dataset_copy: Copy, name: str) -> None:
    path = dataset_copy("appends", "2.1")
    command, *flags = PIPED[name]
    code, err = _with_closed_reader([command, str(path), *flags])
    assert (code, err) == (EXIT_BROKEN_PIPE, "")


@pytest.mark.parametrize("argv", [["--help"], ["compact", "--help"], ["--version"]])
def test_closed_pipe_on_help_and_version(argv: list[str]) -> None:
    assert _with_closed_reader(argv) == (EXIT_BROKEN_PIPE, "")


def test_head_of_a_long_output(tmp_path: Path) -> None:
    """The way users meet it: ``| head -1`` on output longer than the pipe holds."""
    path = tmp_path / "many.lance"
    factory.appends(path, "2.1", [1] * 120)
    command = " ".join(f"'{a}'" for a in COMMAND)
    for args in (f"inspect '{path}' --max-fragments 1000", f"inspect '{path}' --json"):
        pipeline = f"set -o pipefail; {command} {args} 2>{tmp_path}/err | head -1"
        proc = subprocess.run(["bash", "-c", pipeline], capture_output=True, text=True, timeout=180, env=WIDE)
        assert len(proc.stdout.splitlines()) == 1
        assert (tmp_path / "err").read_text() == ""
        assert proc.returncode in (0, EXIT_BROKEN_PIPE)  # 0 when the output fit before head left
