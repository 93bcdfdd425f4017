"""The ``threadflow`` command line (also ``python -m threadflow``); it uses threadflow's public API only.

Commands: ``demo``, ``runs list|status|logs|cancel``, ``serve``. Exit codes:
0 success, 1 not found / ambiguous / not cancellable, 2 usage error, 130 Ctrl+C.
"""

from ._main import build_parser as build_parser
from ._main import main as main

__all__ = ["build_parser", "main"]
