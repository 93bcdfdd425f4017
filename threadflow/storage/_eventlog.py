"""Moved to ``storage/sqlite/_layout.py``; ``clean_text`` to ``storage/_text.py``.

TEMP-SHIM (integrator: drop once ``_cli_runs.py`` imports ``clean_text`` from ``storage._text``).
"""

from ._text import clean_text  # TEMP-SHIM

__all__ = ["clean_text"]  # TEMP-SHIM
