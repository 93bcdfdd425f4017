"""The README's Quickstart is code users paste: it must run and say what it claims."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_quickstart_runs_and_prints_the_cancelled_status() -> None:
    quickstart = next(block for block in python_blocks() if "threading.Timer" in block)
    result = subprocess.run([sys.executable, "-c", quickstart], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "cleaning up" in result.stdout
    assert result.stdout.strip().endswith("cancelled requested too slow")


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one() -> None:
    commands = re.findall(r"```bash\n(python3 -m venv .*?)\n```", README.read_text())
    assert len(commands) == 2
    assert commands[0].endswith("threadflow demo")
    assert commands[1].endswith("python -m pytest")
    ci = (README.parent / ".ci" / "run").read_text()
    assert commands[1] in ci
