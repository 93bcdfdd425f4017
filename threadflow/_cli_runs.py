"""``threadflow runs ...``: the run history commands (SPEC §5).

``runs list``, ``runs status RUN_ID``, ``runs logs RUN_ID [--follow]`` and
``runs cancel RUN_ID [--reason R]`` read the SQLite history named by ``--db``
(before or after the sub-command) or ``$THREADFLOW_DB``. They print tables for
people and, with ``--json``, JSON for scripts. Exit codes: 0 success; 1 no such
run, not cancellable, or an unusable history file; 2 usage. Errors are one
line on stderr. The read commands never create or change a file, except that
reading records runs whose owning process has died as ended (``error``) and
migrates a file written by an older threadflow.

Text arguments are taken as the store keeps text: an undecodable byte in a
run id, reason or workflow (a lone surrogate, the way Python decodes argv)
becomes ``?``, so it is stored, looked up and printed alike, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from .events import (
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
from .status import RunInfo, RunStatus
from .storage import SqliteStore, StoreError
from .storage._eventlog import clean_text

__all__ = ["add_runs_commands"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DB_ENV = "THREADFLOW_DB"
#: How often ``runs logs --follow`` looks for new events.
FOLLOW_INTERVAL = 0.05


def add_runs_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``runs list|status|logs|cancel`` to the ``threadflow`` parser."""
    runs = commands.add_parser(
        "runs", help="list, inspect, follow and cancel stored runs", description=__doc__.splitlines()[0]
    )
    sub = runs.add_subparsers(dest="runs_command", metavar="SUBCOMMAND")
    sub.required = True
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: given here it overrides the top-level --db; absent, it leaves that one alone
    common.add_argument("--db", default=argparse.SUPPRESS, metavar="PATH", help=f"run history (or ${DB_ENV})")
    common.add_argument("--json", action="store_true", help="print JSON for scripts")

    listing = sub.add_parser("list", parents=[common], help="the most recent runs, newest first")
    listing.add_argument("--status", choices=[status.value for status in RunStatus])
    listing.add_argument("--workflow", metavar="W", help="a workflow id or name")
    listing.add_argument("--limit", type=_positive_int, default=50, metavar="N", help="at most N runs (default 50)")
    listing.set_defaults(handler=_command(_list))

    status = sub.add_parser("status", parents=[common], help="one run's record")
    status.add_argument("run_id", metavar="RUN_ID")
    status.set_defaults(handler=_command(_status))

    logs = sub.add_parser("logs", parents=[common], help="one run's events")
    logs.add_argument("run_id", metavar="RUN_ID")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new events until the run ends")
    logs.set_defaults(handler=_command(_logs))

    cancel = sub.add_parser("cancel", parents=[common], help="cancel a run, from any process")
    cancel.add_argument("run_id", metavar="RUN_ID")
    cancel.add_argument("--reason", help="recorded with the cancellation")
    cancel.add_argument(
        "--timeout", type=_positive_float, default=5.0, metavar="SECONDS", help="wait this long for the owner"
    )
    cancel.set_defaults(handler=_command(_cancel))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text!r}")
    return value


class _Failed(Exception):
    """A one-line error for stderr, and the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


Handler = Callable[[SqliteStore, argparse.Namespace, TextIO], int]


def _command(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """Open the store for ``handler``; turn every expected failure into one line on stderr and an exit code."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        name = f"threadflow runs {args.runs_command}"
        for text in ("run_id", "reason", "workflow"):
            if isinstance(value := getattr(args, text, None), str):
                setattr(args, text, clean_text(value))
        try:
            with _open_store(args) as store:
                return handler(store, args, sys.stdout)
        except _Failed as failure:
            print(f"{name}: {failure}", file=sys.stderr)
            return failure.code
        except StoreError as error:
            print(f"{name}: {error}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # e.g. `threadflow runs logs ID | head`
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK

    return run


@contextlib.contextmanager
def _open_store(args: argparse.Namespace) -> Iterator[SqliteStore]:
    path = getattr(args, "db", None) or os.environ.get(DB_ENV)
    if not path:
        raise _Failed(f"no run history given: pass --db PATH or set {DB_ENV}", EXIT_USAGE)
    store = SqliteStore(path, create=False)
    try:
        yield store
    finally:
        store.close()


def _find(store: SqliteStore, run_id: str) -> RunInfo:
    info = store.get_run(run_id)
    if info is None:
        raise _Failed(f"no run {run_id!r} in {store.path}")
    return info


# -- runs list ------------------------------------------------------------------


def _list(store: SqliteStore, args: argparse.Namespace, out: TextIO) -> int:
    status = RunStatus(args.status) if args.status else None
    runs = store.list_runs(status=status, workflow=args.workflow, limit=args.limit)
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


def _status(store: SqliteStore, args: argparse.Namespace, out: TextIO) -> int:
    info = _find(store, args.run_id)
    if args.json:
        print(json.dumps(info.model_dump(mode="json"), indent=2), file=out)
        return EXIT_OK
    owner = store.owner(info.run_id)
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


def _logs(store: SqliteStore, args: argparse.Namespace, out: TextIO) -> int:
    info = _find(store, args.run_id)
    last = 0
    while True:
        for event in store.events(args.run_id, after_seq=last):
            _print_event(event, args.json, out)
            last = event.seq
            if event.terminal:
                return EXIT_OK
        if not args.follow or info.status.is_terminal:
            return EXIT_OK  # a terminal record is written with its terminal event: nothing more will come
        out.flush()
        time.sleep(FOLLOW_INTERVAL)
        info = _find(store, args.run_id)  # notices (and records) an owner that has died


def _print_event(event: BaseEvent, as_json: bool, out: TextIO) -> None:
    if as_json:
        try:
            line = event.model_dump_json()
        except ValueError:  # a token with a lone surrogate (stored exactly): JSON can escape it, pydantic cannot
            line = json.dumps(event.model_dump(mode="json"), separators=(",", ":"))
        print(line, file=out)
        return
    clock = _when(event.created_at, precise=True)[11:]
    step = getattr(event, "step_name", None) or ""
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


def _cancel(store: SqliteStore, args: argparse.Namespace, out: TextIO) -> int:
    info = _find(store, args.run_id)
    accepted = (
        False if info.status.is_terminal else store.request_cancel(args.run_id, args.reason, timeout=args.timeout)
    )
    after = store.get_run(args.run_id) or info
    if args.json:
        print(json.dumps({"run_id": args.run_id, "cancelled": accepted, "status": after.status.value}), file=out)
    if accepted:
        if not args.json:
            print(f"cancelling run {args.run_id}" + (f" ({args.reason})" if args.reason else ""), file=out)
        return EXIT_OK
    if after.status.is_terminal:
        message = f"run {args.run_id} is not cancellable: it has ended ({after.status.value})"
    else:
        owner = store.owner(args.run_id)
        where = f"pid {owner.pid} on {owner.host}" if owner else "its owner"
        message = f"no answer from the process running {args.run_id} ({where}) within {args.timeout:g}s"
    raise _Failed(message)
