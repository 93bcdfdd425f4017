"""The public surface (SPEC §1) is declared once, importable as written, and layered one way."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

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
    namespace: dict[str, object] = {}
    exec("from threadflow import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(threadflow.__all__)


def test_event_module_star_import() -> None:
    namespace: dict[str, object] = {}
    exec("from threadflow.events import *", namespace)
    assert set(namespace) >= EVENT_NAMES
    from threadflow.models import DemoModel
    from threadflow.storage import MemoryStore, RunStore

    assert DemoModel and MemoryStore and RunStore


def test_package_is_typed() -> None:
    assert (PACKAGE / "py.typed").exists()


# Lower layers must not import higher ones (STYLE): exceptions/status → events → _fastevents/_validate →
# storage → _registry/context → steps → runner → workflow → control → cli/server/client.
# Lazy imports inside functions are allowed here (but not in storage, nor in the edges: see below).
LAYERS = [
    {"exceptions", "status", "_printable"},
    {"events"},
    {"_fastevents", "_validate", "_gcdefer", "_observe", "_packedlog"},
    {"storage"},
    {"_registry", "_timer", "context", "_runlog", "_asyncbridge"},
    {
        "retry",
        "agents",
        "_tools",
        "steps",
        "models",
        "output",
        "testing",
        "_fakeopenai",
        "_aio",
        "_branches",
        "compose",
    },
    {"_lane", "_runner", "_abandon", "handles", "_queue"},
    {"_background", "workflow"},
    {"control", "telemetry", "_worker"},
    {"cli", "server", "client", "__init__", "__main__"},
]

# The edges use only the package's public names: these modules (and no private submodule of them),
# plus their own modules and each other (`threadflow serve` starts the server).
EDGES = {"cli": {"server"}, "server": set(), "client": set()}
PUBLIC_FOR_EDGES = {
    "__init__",
    "events",
    "status",
    "exceptions",
    "storage",
    "models",
    "testing",
    "server",
    "client",
    "telemetry",
}

# What storage must never import, even lazily: the core lends a store what it needs (LocalRuns).
ABOVE_STORAGE = {"_registry", "_runner", "_abandon", "context", "workflow", "handles", "control", "_background"}


def _layer(module: str) -> int:
    top = module.split(".", maxsplit=1)[0]
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"module {module!r} is in no layer; add it to LAYERS")


def _imports(path: pathlib.Path, *, lazy: bool) -> set[str]:
    """The package modules a file imports (relative imports), as dotted paths from the package root.

    ``lazy=False``: only those at import time (outside functions and TYPE_CHECKING). Imports inside
    the file's own top-level package (storage/, cli/, server/, ...) are its own business and not listed.
    """
    package = path.relative_to(PACKAGE).parts[:-1]  # () for a top-level module, ("storage", "sqlite") deeper
    nodes = ast.walk(ast.parse(path.read_text())) if lazy else ast.parse(path.read_text()).body
    found: set[str] = set()
    for node in nodes:
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        base = package[: len(package) - (node.level - 1)]  # the package the relative import starts from
        if base:
            continue  # inside the same top-level package (storage/, models/): siblings and parents
        if node.module:
            found.add(node.module)
        else:  # "from . import X": a submodule, or a name re-exported by __init__
            found.update(a.name if (PACKAGE / f"{a.name}.py").exists() else "__init__" for a in node.names)
    return found


def _package_files() -> list[tuple[str, pathlib.Path]]:
    return [(path.relative_to(PACKAGE).as_posix(), path) for path in sorted(PACKAGE.rglob("*.py"))]


def test_imports_flow_one_way() -> None:
    for name, path in _package_files():
        module = name.split("/")[0].removesuffix(".py")
        if module in {"__init__", "__main__"}:
            continue
        mine = _layer(module)
        for imported in _imports(path, lazy=False):
            assert _layer(imported) <= mine, f"{name} imports {imported}, a higher layer"


def test_storage_never_imports_the_core_above_it() -> None:
    for name, path in _package_files():
        if not name.startswith("storage/"):
            continue
        for imported in _imports(path, lazy=True):
            assert imported.split(".")[0] not in ABOVE_STORAGE, f"{name} imports {imported}"


def test_edges_import_only_public_names() -> None:
    for name, path in _package_files():
        edge = name.split("/")[0].removesuffix(".py")  # a package's modules speak for it
        if edge not in EDGES:
            continue
        for imported in _imports(path, lazy=True):
            if imported in EDGES[edge]:
                continue
            parts = imported.split(".")
            public = parts[0] in PUBLIC_FOR_EDGES and not any(p.startswith("_") for p in parts[1:])
            assert public, f"{name} imports {imported}, which is not public API"


def _public_modules() -> list[str]:
    names = []
    for name, _ in _package_files():
        parts = name.removesuffix(".py").split("/")
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(p.startswith("_") for p in parts):
            names.append(".".join(["threadflow", *parts]))
    return names


MACHINERY = {"make_event", "new_run_id", "result_or_raise", "current_context_var", "REGISTRY", "RunState", "EventLog"}


def test_no_public_module_exposes_machinery() -> None:
    import importlib

    for module_name in _public_modules():
        if module_name in {"threadflow.server", "threadflow.client"}:
            continue  # optional extras; the edges' own test files cover them
        module = importlib.import_module(module_name)
        exported = set(getattr(module, "__all__", ()))
        assert not exported & MACHINERY, f"{module_name}.__all__ exports machinery"
        for attr in MACHINERY & set(dir(module)):
            defined_in = getattr(getattr(module, attr), "__module__", "")
            assert "._" in defined_in, f"{module_name}.{attr} is machinery defined in a public module"
    for gone in ("threadflow.registry", "threadflow._reaper"):
        try:
            importlib.import_module(gone)
        except ModuleNotFoundError:
            continue
        raise AssertionError(f"{gone} should not exist")


def test_run_handle_keeps_its_internals_private() -> None:
    assert not hasattr(threadflow.RunHandle, "state")
    assert not hasattr(threadflow.RunHandle, "log")
    assert not hasattr(threadflow.RunHandle, "result_or_raise")


def test_core_imports_without_optional_extras() -> None:
    code = (
        "import sys; sys.modules['fastapi'] = None; sys.modules['httpx'] = None; "
        "import threadflow, threadflow.cli; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.strip() == "ok", result.stderr


def test_run_overloads_keep_their_types(tmp_path: pathlib.Path) -> None:
    """The RunOptions overloads: each mode is typed precisely, and an unknown option is a type error."""
    api = pytest.importorskip("mypy.api")
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        "from threadflow import Workflow\n"
        "wf = Workflow('w', steps=[])\n"
        "reveal_type(wf.run())\n"
        "reveal_type(wf.run(1, stream=True, run_id='x'))\n"
        "reveal_type(wf.run(background=True, run_timeout=2.0))\n"
        "reveal_type(wf.arun(stream=True))\n"
        "async def main() -> None:\n"
        "    reveal_type(await wf.arun(background=True))\n"
        "    reveal_type(await wf.arun(run_id='x'))\n"
        "wf.run(run_idd='x')\n"
    )
    out, _, _ = api.run(["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(snippet)])
    revealed = [line.split('Revealed type is "')[1].rstrip('"') for line in out.splitlines() if "Revealed" in line]
    assert revealed == [
        "threadflow.output.WorkflowRunOutput",
        "threadflow.handles.RunStream",
        "threadflow.handles.RunHandle",
        "threadflow.handles.AsyncRunStream",
        "threadflow.handles.RunHandle",
        "threadflow.output.WorkflowRunOutput",
    ]
    assert 'Unexpected keyword argument "run_idd"' in out
