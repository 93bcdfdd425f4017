"""The public surface (SPEC §1) is declared once, importable as written, and layered one way."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import threadflow

SPEC_NAMES = {
    "Workflow", "Step", "Agent", "StepInput",
    "RunStatus", "CancelCause", "WorkflowRunOutput", "RunHandle", "RunStream",
    "RunEvent", "WorkflowRunEvent",
    "CancellationError", "WorkflowError", "DuplicateRunError",
    "get_context", "shield", "cancel_run", "get_run", "active_runs", "RunInfo", "shutdown",
}  # fmt: skip

EVENT_NAMES = {
    "WorkflowStartedEvent", "StepStartedEvent", "StepRetryingEvent", "StepCompletedEvent",
    "WorkflowCompletedEvent", "WorkflowCancelledEvent", "WorkflowErrorEvent", "RunStartedEvent",
    "RunContentEvent", "RunCompletedEvent", "RunCancelledEvent", "RunErrorEvent", "Event", "parse_event",
}  # fmt: skip

PACKAGE = pathlib.Path(threadflow.__file__).parent


def test_all_spec_names_are_exported_and_all_is_sorted() -> None:
    assert set(threadflow.__all__) >= SPEC_NAMES
    assert list(threadflow.__all__) == sorted(threadflow.__all__)
    for name in threadflow.__all__:
        assert getattr(threadflow, name) is not None


def test_event_module_star_import() -> None:
    namespace: dict[str, object] = {}
    exec("from threadflow.events import *", namespace)
    assert set(namespace) >= EVENT_NAMES
    from threadflow.models import DemoModel
    from threadflow.storage import MemoryStore, RunStore

    assert DemoModel and MemoryStore and RunStore


def test_package_is_typed() -> None:
    assert (PACKAGE / "py.typed").exists()


# Lower layers must not import higher ones (STYLE: events/exceptions → registry/context →
# steps → runner → workflow → cli/server). Lazy imports inside functions are allowed.
LAYERS = [
    {"events", "exceptions"},
    {"_reaper", "registry", "_timer", "context"},
    {"retry", "agents", "steps", "models", "output", "_aio"},
    {"_runner", "storage", "handles", "testing"},
    {"_background", "workflow", "control"},
    {"cli", "_cli_runs", "server", "client", "__init__", "__main__"},
]


def _layer(module: str) -> int:
    top = module.split(".", maxsplit=1)[0]
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"module {module!r} is in no layer; add it to LAYERS")


def _top_level_imports(path: pathlib.Path) -> set[str]:
    """The package modules a file imports at import time (relative imports, outside TYPE_CHECKING)."""
    in_subpackage = path.parent != PACKAGE
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        if in_subpackage and node.level == 1:
            continue  # a sibling inside storage/ or models/
        if node.module:
            found.add(node.module.split(".")[0])
        else:  # "from . import X": a submodule, or a name re-exported by __init__
            found.update(a.name if (PACKAGE / f"{a.name}.py").exists() else "__init__" for a in node.names)
    return found


def test_imports_flow_one_way() -> None:
    for path in PACKAGE.rglob("*.py"):
        module = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if module in {"__init__", "__main__"}:
            continue
        mine = _layer(module)
        for imported in _top_level_imports(path):
            assert _layer(imported) <= mine, f"{path.relative_to(PACKAGE)} imports {imported}, a higher layer"


def test_core_imports_without_optional_extras() -> None:
    code = (
        "import sys; sys.modules['fastapi'] = None; sys.modules['httpx'] = None; "
        "import threadflow, threadflow.cli; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.strip() == "ok", result.stderr
