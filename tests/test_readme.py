"""The README is what users read first: its code must run and its claims must hold.

It is also kept short and self-contained: it lists every cookbook script, links only
to pages that exist, and cites nothing a user does not have (no spec sections, no
issue numbers). The documentation pages under ``docs/`` are held to the last rule too.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 250

# The pitch at the top of the README is a fragment: it names a workflow and a run id it
# does not define. This gives it both, so that running it checks the names it uses.
FRAGMENT_PRELUDE = """
from threadflow import Workflow
wf = Workflow("pitch", steps=[lambda step_input: "done"])
run_id = "not-a-run"
"""


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)


def test_quickstart_runs_and_prints_the_cancelled_status() -> None:
    quickstart = next(block for block in python_blocks(README.read_text()) if "threading.Timer" in block)
    result = run_python(quickstart)
    assert result.returncode == 0, result.stderr
    assert "cleaning up" in result.stdout
    assert result.stdout.strip().endswith("cancelled requested too slow")


def test_every_python_block_in_the_readme_runs() -> None:
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 2
    for block in blocks:
        code = block if "import" in block else FRAGMENT_PRELUDE + block
        result = run_python(code)
        assert result.returncode == 0, f"README block failed:\n{block}\n{result.stderr}"


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one() -> None:
    commands = re.findall(r"```bash\n(python3 -m venv .*?)\n```", README.read_text())
    assert len(commands) == 2
    assert commands[0].endswith("threadflow demo")
    assert commands[1].endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci


def test_ci_builds_the_docs_strictly() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "pip install -e '.[docs]'" in ci
    assert re.search(r"^[^#\n]*mkdocs build --strict", ci, flags=re.M)


def test_readme_is_short() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README has {len(lines)} lines; move detail to docs/"


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "cookbook").glob("*.py")))
def test_every_cookbook_script_is_listed_in_the_readme_and_the_docs(script: str) -> None:
    assert f"cookbook/{script}" in README.read_text()
    assert f"`{script}" in (DOCS / "index.md").read_text()


def test_the_cookbook_list_comes_before_the_quickstart() -> None:
    text = README.read_text()
    assert text.index("## Cookbook") < text.index("## Quickstart")


def _user_facing_pages() -> list[pathlib.Path]:
    # docstrings become the API reference; benchmarks and cookbook scripts are read by users too
    code = [*sorted((ROOT / "threadflow").rglob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py"))]
    return [README, *sorted(DOCS.rglob("*.md")), *code, *sorted((ROOT / "cookbook").glob("*.py"))]


@pytest.mark.parametrize("page", _user_facing_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_references_to_the_spec_or_to_issues(page: pathlib.Path) -> None:
    text = page.read_text()
    for pattern in (r"\bSPEC\b", r"§", r"\bissues?\s*#?\d", r"#\d+\b(?![\w-])"):
        match = re.search(pattern, text, flags=re.I)
        assert match is None, f"{page.name} cites {match.group(0)!r}: users have no spec or issue tracker to look at"


def test_readme_links_point_at_files_and_headings_that_exist() -> None:
    text = README.read_text()
    headings = {_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if link.startswith(("http://", "https://")):
            continue
        path, _, anchor = link.partition("#")
        if path:
            assert (ROOT / path).is_file(), f"README links to missing {path}"
        else:
            assert anchor in headings, f"README links to missing heading #{anchor}"


def _anchor(heading: str) -> str:
    """The id GitHub and MkDocs give a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


def test_every_python_block_in_the_docs_compiles() -> None:
    for page in sorted(DOCS.rglob("*.md")):
        for number, block in enumerate(python_blocks(page.read_text()), start=1):
            compile(textwrap.dedent(block), f"{page.name} block {number}", "exec")
