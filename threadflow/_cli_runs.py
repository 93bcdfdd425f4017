"""``threadflow runs ...``: the run history commands (SPEC §5)."""

from __future__ import annotations

import argparse


def add_runs_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Placeholder until the run-history issue lands: the sub-command exists but reports it."""
    runs = commands.add_parser("runs", help="list, inspect and cancel stored runs")
    runs.set_defaults(handler=lambda args: 2)
