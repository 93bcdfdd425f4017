"""``python -m threadflow``: the command line."""

from .cli import main

raise SystemExit(main())
