"""``threadflow runs list|status|logs|cancel``: the run history commands.

They read the history named by ``--db`` (at the top level, after ``runs`` or
after the sub-command; the last one given wins) or ``$THREADFLOW_DB``, and
print tables for people and, with ``--json``, JSON for scripts. ``RUN_ID`` is
a run's id or, as in git, a prefix that only one run's id starts with; an
exact id always wins. Exit codes: 0 success; 1 no such run, an ambiguous
prefix, not cancellable, or an unusable history; 2 usage. The read commands
never create or change a file, except that reading records runs whose owning
process has died as ended (``error``) and migrates a file written by an older
threadflow.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from .. import RunInfo, RunStatus
from ..events import (
    BaseEvent,
    RunCancelledEvent,
    RunCompletedEvent,
    RunContentEvent,
    RunErrorEvent,
    StepCompletedEvent,
    StepRetryingEvent,
    WorkflowCancelledEvent,
    WorkflowCompletedEvent,
    WorkflowErrorEvent,
)
from ..storage import RunStore
from ._args import (
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    Commands,
    Parser,
    add_db_option,
    positive_float,
    positive_int,
    text,
)
from ._store import db_from, open_store

__all__ = ["add_runs_commands", "find_run"]

#: How often ``runs logs --follow`` looks for new events.
FOLLOW_INTERVAL = 0.05
#: How many candidates an ambiguous run id prefix lists.
CANDIDATES_SHOWN = 3

_RUN_ID_HELP = "a run id, or a prefix of exactly one run's id"


def add_runs_commands(commands: Commands) -> None:
    """Add ``runs list|status|logs|cancel`` to the ``threadflow`` parser."""
    runs = commands.add_parser(
        "runs",
        help="list, inspect, follow and cancel stored runs",
        description="List, inspect, follow and cancel the runs stored in a run history.",
    )
    add_db_option(runs)
    sub = runs.add_subparsers(dest="runs_command", metavar="SUBCOMMAND", required=True)
    common = Parser(add_help=False)
    add_db_option(common)
    common.add_argument("--json", action="store_true", help="print JSON for scripts")

    listing = sub.add_parser("list", parents=[common], help="the most recent runs, newest first")
    listing.add_argument("--status", choices=[status.value for status in RunStatus], help="only runs in this state")
    listing.add_argument("--workflow", type=text, metavar="W", help="only runs of this workflow (an id or a name)")
    listing.add_argument("--limit", type=positive_int, default=50, metavar="N", help="at most N runs (default 50)")
    listing.set_defaults(handler=_command(_list))

    status = sub.add_parser("status", parents=[common], help="one run's record")
    status.add_argument("run_id", type=text, metavar="RUN_ID", help=_RUN_ID_HELP)
    status.set_defaults(handler=_command(_status))

    logs = sub.add_parser("logs", parents=[common], help="one run's events")
    logs.add_argument("run_id", type=text, metavar="RUN_ID", help=_RUN_ID_HELP)
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new events until the run ends")
    logs.set_defaults(handler=_command(_logs))

    cancel = sub.add_parser("cancel", parents=[common], help="cancel a run, from any process")
    cancel.add_argument("run_id", type=text, metavar="RUN_ID", help=_RUN_ID_HELP)
    cancel.add_argument("--reason", type=text, help="recorded with the cancellation")
    cancel.add_argument(
        "--timeout",
        type=positive_float,
        default=5.0,
        metavar="SECONDS",
        help="wait this long for the owning process to answer (default 5)",
    )
    cancel.set_defaults(handler=_command(_cancel))


Handler = Callable[[RunStore, argparse.Namespace, TextIO], int]


def _command(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """``handler`` with the history open (read-only: never created) and closed after."""

    def run(args: argparse.Namespace) -> int:
        db = db_from(args)
        if not db:
            raise CommandError("no run history given: pass --db PATH or set THREADFLOW_DB", EXIT_USAGE)
        args.db = db
        store = open_store(db, create=False)
        try:
            return handler(store, args, sys.stdout)
        finally:
            store.close()

    return run


def find_run(store: RunStore, given: str, *, where: str = "the run history") -> RunInfo:
    """The run ``given`` names: the run with that exact id, else the only run whose id starts with it.

    Raises ``CommandError`` (exit 1) when no run matches, or when several do
    (listing a few). Prefixes need the store's ``run_ids_with_prefix``; with a
    store that lacks it, only exact ids are found.
    """
    info = store.get_run(given)
    if info is not None:
        return info
    matches = _ids_with_prefix(store, given)
    if len(matches) > 1:
        shown = ", ".join(matches[:CANDIDATES_SHOWN]) + (", ..." if len(matches) > CANDIDATES_SHOWN else "")
        raise CommandError(f"run id prefix {given!r} is ambiguous: it matches {shown}; give more of the id")
    info = store.get_run(matches[0]) if matches else None
    if info is None:
        raise CommandError(f"no run {given!r} in {where}")
    return info


def _ids_with_prefix(store: RunStore, prefix: str) -> list[str]:
    finder: Callable[..., Sequence[str]] | None = getattr(store, "run_ids_with_prefix", None)
    if finder is None or not prefix:  # a store without prefix lookup finds exact ids only
        return []
    return list(finder(prefix, limit=CANDIDATES_SHOWN + 1))


def _accepts(method: Callable[..., Any], keyword: str) -> bool:
    """Whether a store's ``method`` takes the optional ``keyword`` (SqliteStore's extensions to RunStore)."""
    return keyword in inspect.signature(method).parameters


# -- runs list ------------------------------------------------------------------


def _list(store: RunStore, args: argparse.Namespace, out: TextIO) -> int:
    status = RunStatus(args.status) if args.status else None
    lister: Callable[..., Sequence[RunInfo]] = store.list_runs
    workflow = "workflow" if _accepts(lister, "workflow") else "workflow_id"  # an id or a name, where the store can
    runs = lister(status=status, limit=args.limit, **{workflow: args.workflow})
    if args.json:
        print(json.dumps([info.model_dump(mode="json") for info in runs], indent=2), file=out)
    elif not runs:
        print("no runs", file=out)
    else:
        _print_table([_row(info) for info in runs], out)
    return EXIT_OK


_COLUMNS = ("RUN ID", "WORKFLOW", "STATUS", "STEP", "CREATED", "DURATION", "DETAIL")


def _row(info: RunInfo) -> tuple[str, ...]:
    return (
        info.run_id,
        info.workflow_id,
        info.status.value,
        info.step_name or "-",
        _when(info.created_at),
        _duration(info),
        _shorten(_detail(info), 60),
    )


def _print_table(rows: Sequence[tuple[str, ...]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]
    for row in [_COLUMNS, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)


def _detail(info: RunInfo) -> str:
    if info.status is RunStatus.error:
        return f"{info.error_type}: {info.error}" if info.error_type else str(info.error or "")
    if info.cause is not None:
        return f"{info.cause.value}: {info.reason}" if info.reason else info.cause.value
    return ""


def _when(at: float | None, *, precise: bool = False) -> str:
    if at is None:
        return "-"
    text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))
    return f"{text}.{int(at % 1 * 1000):03d}" if precise else text


def _duration(info: RunInfo) -> str:
    if info.started_at is None:
        return "-"
    seconds = (info.ended_at or time.time()) - info.started_at
    return f"{seconds:.2f}s" if seconds < 60 else f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# -- runs status ------------------------------------------------------------------


def _status(store: RunStore, args: argparse.Namespace, out: TextIO) -> int:
    info = find_run(store, args.run_id, where=args.db)
    if args.json:
        print(json.dumps(info.model_dump(mode="json"), indent=2), file=out)
        return EXIT_OK
    owner = _owner(store, info.run_id)
    fields = {
        "run id": info.run_id,
        "workflow": f"{info.workflow_name} ({info.workflow_id})",
        "status": info.status.value,
        "step": info.step_name or "-",
        "cause": info.cause.value if info.cause else "-",
        "reason": info.reason or "-",
        "error": f"{info.error_type}: {info.error}" if info.error is not None else "-",
        "created": _when(info.created_at, precise=True),
        "started": _when(info.started_at, precise=True),
        "ended": _when(info.ended_at, precise=True),
        "duration": _duration(info),
        "owner": f"pid {owner.pid} on {owner.host}" if owner else "-",
    }
    for name, value in fields.items():
        print(f"{name + ':':<10} {value}", file=out)
    return EXIT_OK


# -- runs logs ----------------------------------------------------------------------


def _logs(store: RunStore, args: argparse.Namespace, out: TextIO) -> int:
    info = find_run(store, args.run_id, where=args.db)
    last = 0
    while True:
        for event in store.events(info.run_id, after_seq=last):
            _print_event(event, args.json, out)
            last = event.seq
            if event.terminal:
                return EXIT_OK
        if not args.follow or info.status.is_terminal:
            return EXIT_OK  # a terminal record is written with its terminal event: nothing more will come
        out.flush()
        time.sleep(FOLLOW_INTERVAL)
        info = find_run(store, info.run_id, where=args.db)  # notices (and records) an owner that has died


def _print_event(event: BaseEvent, as_json: bool, out: TextIO) -> None:
    if as_json:
        try:
            line = event.model_dump_json()
        except ValueError:  # a token with a lone surrogate (stored exactly): JSON can escape it, pydantic cannot
            line = json.dumps(event.model_dump(mode="json"), separators=(",", ":"))
        print(line, file=out)
        return
    clock = _when(event.created_at, precise=True)[11:]
    # Where the event came from: inside a composite step, the path (fanout/summarize); old logs have none.
    step = getattr(event, "step_path", None) or getattr(event, "step_name", None) or ""
    print(f"{event.seq:>5}  {clock}  {event.event.value:<18}  {step:<12}  {_event_detail(event)}".rstrip(), file=out)


def _event_detail(event: BaseEvent) -> str:
    if isinstance(event, RunContentEvent):
        return _shorten(repr(event.content), 70)
    if isinstance(event, (StepCompletedEvent, RunCompletedEvent, WorkflowCompletedEvent)):
        return _shorten(_content_text(event.content), 70)
    if isinstance(event, StepRetryingEvent):
        return f"attempt {event.attempt} failed ({event.error_type}: {event.error}); retrying in {event.delay:g}s"
    if isinstance(event, (WorkflowCancelledEvent, RunCancelledEvent)):
        return f"{event.cause.value}: {event.reason}" if event.reason else event.cause.value
    if isinstance(event, (WorkflowErrorEvent, RunErrorEvent)):
        return f"{event.error_type}: {event.error}"
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return repr(content)
    try:
        return json.dumps(content, default=str)
    except ValueError:
        return repr(content)


# -- runs cancel ----------------------------------------------------------------------


def _cancel(store: RunStore, args: argparse.Namespace, out: TextIO) -> int:
    info = find_run(store, args.run_id, where=args.db)
    run_id = info.run_id
    accepted = False if info.status.is_terminal else _request_cancel(store, run_id, args.reason, args.timeout)
    after = store.get_run(run_id) or info
    if args.json:
        print(json.dumps({"run_id": run_id, "cancelled": accepted, "status": after.status.value}), file=out)
    if accepted:
        if not args.json:
            print(f"cancelling run {run_id}" + (f" ({args.reason})" if args.reason else ""), file=out)
        return EXIT_OK
    if after.status.is_terminal:
        raise CommandError(f"run {run_id} is not cancellable: it has ended ({after.status.value})")
    owner = _owner(store, run_id)
    where = f"pid {owner.pid} on {owner.host}" if owner else "its owner"
    raise CommandError(f"no answer from the process running {run_id} ({where}) within {args.timeout:g}s")


def _request_cancel(store: RunStore, run_id: str, reason: str | None, timeout: float) -> bool:
    request: Callable[..., bool | None] = store.request_cancel
    options = {"timeout": timeout} if _accepts(request, "timeout") else {}
    return bool(request(run_id, reason, **options))


def _owner(store: RunStore, run_id: str) -> Any:
    """The process that runs ``run_id`` (``.pid``, ``.host``), where the store knows it; else None."""
    owner: Callable[[str], Any] | None = getattr(store, "owner", None)
    return owner(run_id) if owner is not None else None
