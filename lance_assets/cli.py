"""``lance-assets``: inspect and compact Lance datasets from the terminal.

Parsing and presentation only; all work is done by ``lance_assets.engine``.
Expected failures print one line and exit 2; only bugs show a traceback. A reader that goes
away early (``| head``) ends the command quietly with 141, as a shell reports SIGPIPE.
Sizes are printed in binary units (KiB, MiB, GiB) by :func:`human_bytes`, counts with their
noun by :func:`count`, and long lists are cut by :func:`capped`: one way each, everywhere.

Each command imports the engine modules (and rich) it runs when it runs: building the parser
needs only the option declarations, so ``--help`` and a mistyped flag answer at once, and
``inspect`` does not pay for compaction, commits or retention.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import types
import typing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

from lance_assets.engine.options import (
    DEFAULT_OLDER_THAN_SECONDS,
    RUNNER_CHOICES,
    RUNNER_LOCAL,
    CompactionOptions,
    OptionError,
    option_specs,
    parse_duration,
)
from lance_assets.errors import LanceAssetsError

if TYPE_CHECKING:
    from _typeshed import SupportsWrite
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from lance_assets.engine.maintenance.inspect import Inspection
    from lance_assets.engine.planning.plan import CompactionPlan
    from lance_assets.engine.report import CompactionReport, RewriteResult

EXIT_ERROR = 2
#: 128 + SIGPIPE: what a shell reports for a command whose reader went away (``| head``).
EXIT_BROKEN_PIPE = 141
#: Names the distribution is installed under (``--version``).
DISTRIBUTION = "lance_assets"

T = TypeVar("T")


def _storage_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values that parse as JSON (numbers, booleans, objects) are decoded."""
    from lance_assets.io.storage import decode_option_value

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--storage-option expects KEY=VALUE, got {pair!r}")
        out[key] = decode_option_value(value)
    return out


def human_bytes(n: float) -> str:
    """A size in binary units (``512 B``, ``1.5 KiB``, ``3.0 GiB``): the one unit system of
    every size the CLI prints, tables, summaries and the progress bar alike."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def count(n: int, noun: str) -> str:
    """``1 fragment``, ``0 fragments``, ``1,024 rows``: a count and its noun, in agreement.
    Every noun the CLI counts makes its plural with an ``s``."""
    return f"{n:,} {noun if n == 1 else noun + 's'}"


def capped(items: Sequence[T], limit: int, flag: str) -> tuple[Sequence[T], int]:
    """The first ``limit`` of ``items`` to list, and how many are left out: text output names
    a screenful and counts the rest (``--json`` has them all). ``flag`` sets ``limit``; a
    negative one is a usage error under that flag."""
    if limit < 0:
        raise argparse.ArgumentTypeError(f"{flag} must not be negative, not {limit}")
    return items[:limit], max(0, len(items) - limit)


def _print_inspection(report: Inspection, console: Console, fragments: Sequence[Any], more: int) -> None:
    from rich.markup import escape
    from rich.table import Table

    from lance_assets.engine.maintenance.inspect import SMALL_PAGE_RULE

    s = report.summary
    console.print(
        f"[bold]{escape(report.uri)}[/bold]  version {report.version}  storage {report.storage_version}  "
        f"({report.naming_scheme} manifest names, written by {escape(report.writer or '?')})"
    )
    console.print(
        f"feature flags: reader {', '.join(report.reader_feature_flags) or 'none'}; "
        f"writer {', '.join(report.writer_feature_flags) or 'none'}"
    )
    schema = Table(title="schema", title_justify="left")
    for col in ("id", "parent", "name", "type", "nullable"):
        schema.add_column(col)
    for col_info in report.schema:
        schema.add_row(
            str(col_info.id),
            str(col_info.parent_id),
            escape(col_info.name),
            escape(col_info.logical_type),
            "yes" if col_info.nullable else "no",
        )
    console.print(schema)
    frags = Table(title=f"fragments ({s.fragments})", title_justify="left")
    for col in ("id", "physical rows", "deleted", "files", "bytes", "file version"):
        frags.add_column(col, justify="right" if col != "file version" else "left")
    for f in fragments:
        frags.add_row(
            str(f.id), f"{f.physical_rows:,}", f"{f.deleted_rows:,}", str(f.files), human_bytes(f.bytes), f.file_version
        )
    if more:
        frags.add_row("…", f"{more:,} more", "", "", "", "")
    console.print(frags)
    if report.indices:
        idx = Table(title="indices", title_justify="left")
        for col in ("name", "fields", "fragments"):
            idx.add_column(col)
        for i in report.indices:
            idx.add_row(escape(i.name), ",".join(map(str, i.fields)), "?" if i.fragment_ids is None else str(len(i.fragment_ids)))
        console.print(idx)
    console.print(
        f"rows {s.rows:,} (+{s.deleted_rows:,} deleted) in {count(s.fragments, 'fragment')}, "
        f"{count(s.data_files, 'data file')}, {human_bytes(s.bytes)}; "
        f"[bold]{count(s.small_fragments, 'fragment')}[/bold] under {count(s.target_rows_per_fragment, 'row')}"
    )
    console.print("size histogram: " + ", ".join(f"{k}: {v}" for k, v in s.histogram.items()))
    if report.columns:
        cols = Table(title="pages per column", title_justify="left")
        for col in ("column", "files", "pages", "pages/file", "rows/page", "bytes/page", "small pages"):
            cols.add_column(col, justify="left" if col == "column" else "right")
        for c in report.columns:
            cols.add_row(
                escape(c.name),
                f"{c.files:,}",
                f"{c.pages:,}",
                f"{c.pages_per_file:,.1f}",
                f"{c.rows_per_page:,.0f}",
                human_bytes(c.bytes_per_page),
                f"{c.small_pages:,}",
            )
        console.print(cols)
        console.print(
            f"pages {s.pages or 0:,}, [bold]{s.small_pages or 0:,}[/bold] small ({SMALL_PAGE_RULE}); "
            f"{count(s.small_page_fragments or 0, 'fragment')} with columns made of small pages"
        )


def _cmd_inspect(args: argparse.Namespace, console: Console) -> int:
    capped((), args.max_fragments, "--max-fragments")  # refused before any read
    _checked(
        lambda: CompactionOptions(
            target_rows_per_fragment=args.target_rows_per_fragment, max_concurrent_requests=args.max_concurrent_requests
        )
    )
    from lance_assets.engine.maintenance.inspect import inspect_dataset

    report = inspect_dataset(
        args.uri,
        version=args.version,
        target_rows_per_fragment=args.target_rows_per_fragment,
        storage_options=args.storage_options,
        pages=args.pages,
        max_concurrent_requests=args.max_concurrent_requests,
    )
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        _print_inspection(report, console, *capped(report.fragments, args.max_fragments, "--max-fragments"))
    return 0


def _print_report(report: CompactionReport, console: Console) -> None:
    if report.dry_run:
        console.print(
            f"[bold]dry run[/bold] on version {report.read_version}: {count(report.tasks, 'task')} would merge "
            f"{count(report.fragments_removed, 'fragment')} into {report.fragments_added:,}, "
            f"reading {human_bytes(report.bytes_read)}"
        )
    elif report.version is None:
        console.print(f"nothing to compact at version {report.read_version}")
    else:
        rate = report.bytes_read / report.seconds if report.seconds else 0.0
        console.print(
            f"committed version [bold]{report.version}[/bold] (read {report.read_version}): "
            f"{count(report.fragments_removed, 'fragment')} -> {report.fragments_added:,}, "
            f"{count(report.files_removed, 'file')} removed, {report.files_added:,} added, {count(report.rows, 'row')}, "
            f"{human_bytes(report.bytes_written)} written in {report.seconds:.2f}s ({human_bytes(rate)}/s)"
        )
    reasons: dict[str, int] = {}
    for s in report.skipped:
        reasons[s.reason] = reasons.get(s.reason, 0) + 1
    if reasons:
        console.print("skipped fragments: " + ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())))
    _print_notes(report, console)


def _print_notes(report: CompactionReport, console: Console) -> None:
    """What ``--json`` says in ``notes`` and ``indices`` that a user must know: notes about
    fragments by reason (count and the first detail), the others in full, and every index that
    does not cover the merged rows."""
    from rich.markup import escape

    by_reason: dict[str, list[str]] = {}
    for n in report.notes:
        if n.fragment_id is None:
            console.print(f"note: {n.reason}: {escape(n.detail)}")
        else:
            by_reason.setdefault(n.reason, []).append(n.detail)
    for reason, details in sorted(by_reason.items()):
        console.print(f"note: {reason}: {count(len(details), 'fragment')} (e.g. {escape(details[0])})")
    for i in report.indices:
        if i.get("covers_output") is False:
            console.print(
                f"note: index {escape(str(i['name']))} does not cover the merged rows ({i['remap']}): "
                "they are scanned until optimize_indices"
            )


def _scalar(tp: Any) -> Any:
    """``int`` for ``int | None``; the type itself otherwise."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (types.UnionType, typing.Union) and len(args) == 1 else tp


def add_option_flags(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """One flag per compaction option (``engine.options``): type, default and help come from
    its declaration, so the CLI never drifts from the library or the Dagster config."""
    for spec in option_specs():
        if names is not None and spec.name not in names:
            continue
        kind = _scalar(spec.type)
        kwargs: dict[str, Any] = {"dest": spec.name, "help": spec.help}
        if kind is bool:
            kwargs["action"] = "store_true" if spec.default is False else argparse.BooleanOptionalAction
            if spec.default is not False:
                kwargs["default"] = spec.default
        elif typing.get_origin(kind) is frozenset:
            kwargs.update(action="append", type=typing.get_args(kind)[0], default=[], metavar=spec.metavar)
            kwargs["help"] += " (repeatable)"
        elif typing.get_origin(kind) is Literal:
            kwargs.update(choices=typing.get_args(kind), default=spec.default)
            kwargs["help"] += " (default: %(default)s)"
        else:
            kwargs.update(type=kind, default=spec.default, metavar=spec.metavar)
            if spec.default is not None:
                kwargs["help"] += " (default: %(default)s)"
        parser.add_argument(spec.flag, **kwargs)


def options_from_args(args: argparse.Namespace) -> CompactionOptions:
    values = {spec.name: getattr(args, spec.name) for spec in option_specs()}
    values["excluded_fragment_ids"] = frozenset(values["excluded_fragment_ids"])
    return _checked(lambda: CompactionOptions(**values))


def _checked(make: Callable[[], CompactionOptions]) -> CompactionOptions:
    """``make()``, with an option out of range reported under its flag (bad input, not a bug)."""
    try:
        return make()
    except OptionError as exc:
        flags = {spec.name: spec.flag for spec in option_specs()}
        raise argparse.ArgumentTypeError(f"{flags.get(exc.name, exc.name)} {exc.problem}") from None


#: Flags whose value may start with "-" (a negative duration, rejected with its own message);
#: argparse would otherwise take the value for a flag and say "expected one argument".
_DASHED_VALUES = ("--older-than",)


def _attach_dashed_values(argv: Sequence[str]) -> list[str]:
    """``--older-than -5d`` as ``--older-than=-5d``, so the value reaches its check."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in _DASHED_VALUES:
            value = next(it, None)
            if value is not None and value.startswith("-") and value[1:2].isdigit():
                out.append(f"{arg}={value}")
                continue
            out.append(arg)
            if value is not None:
                out.append(value)
            continue
        out.append(arg)
    return out


class _CopyProgress:
    """The terminal bar of one compaction: bytes copied of the plan's bytes, in the units of
    the summary (:func:`human_bytes`).

    Copies report the page bytes they move as they go; a task that finishes counts its
    planned bytes in full (its file metadata too, which no copy reports), so the bar reaches
    100 % when the last task is done -- and says so while the commit runs. Runners that copy
    elsewhere (processes, Ray) report only finished tasks: the bar moves a task at a time.
    """

    def __init__(self, console: Console) -> None:
        self._console = console
        self._lock = threading.Lock()  # copies report from several threads
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._task_bytes: dict[int, int] = {}
        self._copied = self._finished = self._done = 0

    def __enter__(self) -> _CopyProgress:
        self._bar = _progress_bar(self._console)
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._bar is not None
        self._bar.stop()

    def planned(self, plan: CompactionPlan) -> None:
        assert self._bar is not None
        self._task_bytes = {t.task_id: t.bytes for t in plan.tasks}
        self._task = self._bar.add_task(f"copying {count(len(plan.tasks), 'task')}", total=plan.bytes_to_read or None)

    def copied(self, n: int) -> None:
        with self._lock:
            self._copied += n
            self._show()

    def task_done(self, result: RewriteResult) -> None:
        with self._lock:
            self._done += 1
            self._finished += self._task_bytes.get(result.task_id, 0)
            tasks = len(self._task_bytes)
            self._show("committing" if self._done == tasks else f"task {self._done}/{tasks} done")

    def _show(self, description: str | None = None) -> None:
        if self._bar is None or self._task is None:
            return
        total = sum(self._task_bytes.values())
        completed = total if self._done == len(self._task_bytes) else min(total, max(self._copied, self._finished))
        self._bar.update(self._task, completed=completed, description=description)


def _progress_bar(console: Console) -> Progress:
    """rich's bar with sizes and speed through :func:`human_bytes` (rich's own byte columns
    print decimal kB and MB)."""
    from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class Sizes(ProgressColumn):
        def render(self, task: Task) -> Text:
            total = "?" if task.total is None else human_bytes(task.total)
            return Text(f"{human_bytes(task.completed)}/{total}", style="progress.download")

    class Speed(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("?" if speed is None else f"{human_bytes(speed)}/s", style="progress.data.speed")

    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), TaskProgressColumn(), Sizes(), Speed())
    return Progress(*columns, TimeElapsedColumn(), console=console, transient=True)


def _cmd_compact(args: argparse.Namespace, console: Console) -> int:
    from contextlib import nullcontext

    from lance_assets.engine.compaction import compact
    from lance_assets.engine.copying.parts import tune_allocator
    from lance_assets.engine.runners import make_runner

    tune_allocator()  # this process is ours: keep freed memory for the next page
    options = options_from_args(args)
    if args.workers < 1:
        raise argparse.ArgumentTypeError("--workers must be at least 1")
    shown = _CopyProgress(console) if not args.json and not options.dry_run and console.is_terminal else None
    runner = make_runner(
        args.runner, max_workers=args.workers, ray_address=args.ray_address, progress=shown.copied if shown else None
    )
    with shown or nullcontext():
        report = compact(
            args.uri,
            options,
            runner=runner,
            on_plan=shown.planned if shown else None,
            on_task_done=shown.task_done if shown else None,
            storage_options=args.storage_options,
        )
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        _print_report(report, console)
    return 0


def _cmd_cleanup(args: argparse.Namespace, console: Console) -> int:
    from datetime import timedelta

    from rich.markup import escape

    from lance_assets.engine.maintenance.cleanup import cleanup

    try:
        older_than = timedelta(seconds=parse_duration(args.older_than))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--older-than: {exc}") from None
    if args.retain_versions is not None and args.retain_versions < 1:
        raise argparse.ArgumentTypeError("--retain-versions must be at least 1")
    capped((), args.max_files, "--max-files")  # refused before anything is removed
    report = cleanup(
        args.uri,
        older_than=older_than,
        retain_versions=args.retain_versions,
        dry_run=args.dry_run,
        storage_options=args.storage_options,
    )
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    verb = "would remove" if report.dry_run else "removed"
    if report.reuse_versions_trimmed:
        console.print(
            f"{'would trim' if report.dry_run else 'trimmed'} {count(report.reuse_versions_trimmed, 'fragment-reuse version')} "
            "every index has caught up with"
        )
    if args.retain_versions is not None:
        console.print(f"{verb} {count(len(report.removed_versions), 'old version')}, kept {report.versions_kept:,}")
    console.print(
        f"{verb} {count(len(report.files), 'unreferenced file')} ({human_bytes(report.bytes)}) older than {args.older_than}; "
        f"kept {count(report.kept_too_young, 'younger one')}; {count(report.versions, 'version')} scanned"
        + (
            f"; {'would abort' if report.dry_run else 'aborted'} {count(report.aborted_uploads, 'unfinished upload')}"
            if report.aborted_uploads
            else ""
        )
    )
    files, more = capped(report.files, args.max_files, "--max-files")
    for f in files:
        console.print(f"  {escape(f.path)}  {human_bytes(f.bytes)}  ({f.kind})", highlight=False)
    if more:
        console.print(f"  … {count(more, 'more file')} (--max-files N lists more, --json lists all)", highlight=False)
    return 0


#: What ``cleanup --help`` says about its JSON, the deprecated names above all (the names
#: themselves: ``engine.maintenance.cleanup.DEPRECATED_JSON_KEYS``, not imported here to keep ``--help`` fast).
CLEANUP_JSON_EPILOG = (
    "--json: files_removed, bytes_removed and versions_removed count what is removed (or would be); "
    "removed_versions lists those version numbers and files every file with its size and kind. "
    "Deprecated: 'removed' (read files_removed) and 'bytes' (read bytes_removed) are still written "
    "in this release and go in the next one."
)


def package_version() -> str:
    """The installed distribution's version; only ``--version`` pays for importlib.metadata."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """``--version``: the package version, looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> NoReturn:
        print(f"{parser.prog} {package_version()}")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose help, like every other output, lets a closed pipe reach
    :func:`main` (argparse itself swallows the error and exits 0)."""

    def print_help(self, file: SupportsWrite[str] | None = None) -> None:
        (file or sys.stdout).write(self.format_help())


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lance-assets", description="Keep Lance datasets compact.")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_inspect(sub)
    _add_compact(sub)
    _add_cleanup(sub)
    return parser


def _common_flags(p: argparse.ArgumentParser, json_replaces: str) -> None:
    """The dataset, ``--json`` and ``--storage-option``: every command has them."""
    p.add_argument("uri", help="dataset path or URL (s3://, gs://, az://, memory://, local path)")
    p.add_argument("--json", action="store_true", help=f"print one JSON object instead of {json_replaces}")
    p.add_argument(
        "--storage-option",
        dest="storage_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to the fsspec filesystem (repeatable)",
    )


def _add_inspect(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("inspect", help="versions, schema, fragments and a fragmentation summary")
    _common_flags(p, "tables")
    add_option_flags(p, ["target_rows_per_fragment"])
    p.add_argument("--version", type=int, default=None, help="inspect this version instead of the latest")
    p.add_argument(
        "--max-fragments", type=int, default=50, metavar="N", help="fragments listed in the table output (default %(default)s)"
    )
    p.add_argument(
        "--pages",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="page health: read every data file's metadata for pages per column and small pages (--no-pages: manifest only)",
    )
    add_option_flags(p, ["max_concurrent_requests"])
    p.set_defaults(run=_cmd_inspect, parser=p)


def _add_compact(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("compact", help="merge small fragments by binary copy and commit a new version")
    _common_flags(p, "text")
    add_option_flags(p)
    p.add_argument(
        "--runner",
        choices=RUNNER_CHOICES,
        default=RUNNER_LOCAL,
        help=(
            "where copy tasks run: this process (threads), local processes, or a Ray cluster (the 'ray' "
            "extra); one commit either way"
        ),
    )
    p.add_argument(
        "--workers", type=int, default=1, metavar="N", help="tasks at once for the local (threads) and processes runners"
    )
    p.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to use (e.g. ray://head:10001 or auto); default: start a local one",
    )
    p.set_defaults(run=_cmd_compact, parser=p)


def _add_cleanup(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "cleanup", help="remove old versions and the files only they (or no version) reference", epilog=CLEANUP_JSON_EPILOG
    )
    _common_flags(p, "text")
    p.add_argument(
        "--older-than",
        default=f"{int(DEFAULT_OLDER_THAN_SECONDS // 86400)}d",
        metavar="DURATION",
        help="the cutoff for versions (commit time) and unreferenced files (age), e.g. 30m, 2h, 7d;"
        " default %(default)s, as Lance's — longer than any running writer",
    )
    keep = p.add_mutually_exclusive_group()
    keep.add_argument(
        "--retain-versions",
        type=int,
        default=1,
        metavar="N",
        help="remove versions older than --older-than except the newest N (default %(default)s), the latest and"
        " tagged ones, with the files only they reference (data and blob sidecars, deletions, transactions,"
        " index folders)",
    )
    keep.add_argument(
        "--orphans-only",
        dest="retain_versions",
        action="store_const",
        const=None,
        help="remove no version, only unreferenced files older than --older-than",
    )
    p.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
    p.add_argument(
        "--max-files",
        type=int,
        default=50,
        metavar="N",
        help="files listed in the text output (default %(default)s; --json lists all)",
    )
    p.set_defaults(run=_cmd_cleanup, parser=p)


class _DeferredConsole:
    """A rich ``Console`` made on first use: ``--json`` output never imports rich."""

    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            self._console = _console(stderr=self._stderr)
        return getattr(self._console, name)

    # rich's live displays (the progress bar) hold the console as a context manager, and
    # ``with`` looks these up on the class, past ``__getattr__``
    def __enter__(self) -> Any:
        return self.__getattr__("__enter__")()

    def __exit__(self, *exc: object) -> Any:
        return self.__getattr__("__exit__")(*exc)


def _console(*, stderr: bool) -> Console:
    from rich.console import Console

    class PipeAwareConsole(Console):
        def on_broken_pipe(self) -> None:
            """rich would exit 1 here; raised instead, a closed pipe ends every command the same way (:func:`main`)."""
            raise BrokenPipeError

    return PipeAwareConsole(stderr=stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``lance-assets`` entry point: the command's exit code.

    A reader that stops reading (``lance-assets inspect ds --json | head -1``) ends the command
    quietly with :data:`EXIT_BROKEN_PIPE`: stdout is pointed at devnull so that neither we nor
    the interpreter's exit flush writes to the closed pipe again."""
    try:
        try:
            return _run(build_parser(), _attach_dashed_values(sys.argv[1:] if argv is None else argv))
        finally:  # --help and --version exit through here too
            sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _run(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    args, unknown = parser.parse_known_args(argv)
    # the subcommand's usage, not the top-level one, for a mistyped flag or a flag out of range:
    # that is where the flag lives
    usage = typing.cast("argparse.ArgumentParser", getattr(args, "parser", parser))
    if unknown:
        usage.error(f"unrecognized arguments: {' '.join(unknown)}")
    console = typing.cast("Console", _DeferredConsole(stderr=False))
    err = typing.cast("Console", _DeferredConsole(stderr=True))
    try:
        args.storage_options = _storage_options(args.storage_options)
        return int(args.run(args, console))
    except argparse.ArgumentTypeError as exc:
        usage.error(str(exc))
    except LanceAssetsError as exc:
        from rich.markup import escape

        # escape: paths and messages may contain [..] (rich markup); soft_wrap: one line, never wrapped
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
