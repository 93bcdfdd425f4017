"""Without the ``server`` extra, the HTTP modules and cookbook scripts say how to install it (issue 8, item 19).

Each check runs in a fresh interpreter where the extra's modules are made
unimportable (``sys.modules[name] = None``), as if they were not installed.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

HINT = "pip install 'threadflow[server]'"
COOKBOOK = pathlib.Path(__file__).parent.parent / "cookbook"


def run_without(modules: list[str], code: str) -> subprocess.CompletedProcess[str]:
    hide = "".join(f"sys.modules[{name!r}] = None\n" for name in modules)
    return subprocess.run(
        [sys.executable, "-c", f"import sys\n{hide}{code}"], capture_output=True, text=True, timeout=60, check=False
    )


IMPORT_AND_REPORT = """
try:
    {statement}
except ImportError as error:
    print(type(error).__name__, error)
else:
    print("imported")
"""


@pytest.mark.parametrize(
    ("missing", "statement"),
    [
        ("httpx", "import threadflow.client"),
        ("fastapi", "from threadflow.server import create_app"),
        ("sse_starlette", "from threadflow.server import create_app"),
        ("uvicorn", "from threadflow.server import serve_target"),
    ],
)
def test_importing_without_the_extra_raises_import_error_with_the_hint(missing: str, statement: str) -> None:
    result = run_without([missing], IMPORT_AND_REPORT.format(statement=statement))
    assert result.returncode == 0, result.stderr
    kind, _, message = result.stdout.strip().partition(" ")
    assert kind == "ImportError"  # not a bare ModuleNotFoundError naming a module the user never imported
    assert HINT in message and repr(missing) in message


def test_with_the_extra_both_modules_import() -> None:
    result = run_without([], IMPORT_AND_REPORT.format(statement="import threadflow.client, threadflow.server"))
    assert result.stdout.strip() == "imported", result.stdout + result.stderr


@pytest.mark.parametrize("script", sorted(path.name for path in COOKBOOK.glob("http_*.py")))
def test_http_cookbook_scripts_without_the_extra_print_the_hint_and_exit_1(script: str) -> None:
    run = f"import runpy\nsys.argv = [{str(COOKBOOK / script)!r}]\nrunpy.run_path(sys.argv[0], run_name='__main__')"
    result = run_without(["httpx", "fastapi", "sse_starlette", "uvicorn"], run)
    assert result.returncode == 1
    assert HINT in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
