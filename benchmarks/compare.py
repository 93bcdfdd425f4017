"""This tree vs a release, in one run: install the tag into a temporary venv and interleave pyperf runs.

Run: ``python benchmarks/compare.py`` (``--tag v0.1.0`` by default; ``--quick`` for a smoke run).

1. The tag: ``git archive <tag>`` into a temporary directory, ``python -m venv``
   there, ``pip install --no-deps`` of that tree. Offline: it is built with this
   interpreter's setuptools (>= 68) and wheel, which the test extra installs;
   without them pip builds in isolation, fetching them from its index or cache.
   The venv sees this interpreter's site-packages through a ``.pth`` file, so
   both versions run on the very same pydantic, tenacity and pyperf: the ratio
   measures threadflow alone.
2. Rounds: each round runs the pyperf script ``_compare_worker.py`` once per
   version (pyperf: calibrated loops, several worker processes), alternating
   which goes first, so load on a shared machine falls on both alike.
3. The table: per benchmark, this tree's and the tag's mean, the ratio of the
   means over all rounds and the range of the per-round ratios; then
   ``pyperf compare_to`` on the pooled values.

``--quick`` runs one round of a single value per benchmark (pyperf's
``--debug-single-value``): a smoke test that the harness and the install
work, not a measurement.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

import pyperf

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "_compare_worker.py"


def install_tag(tag: str, where: pathlib.Path) -> pathlib.Path:
    """A venv in ``where`` with ``tag`` of this repository installed; its python."""
    src = where / "src"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", tag], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Our dependencies, shared: appended to sys.path after the venv's own site-packages.
    pathlib.Path(site, "_threadflow_compare_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # This interpreter's pip installs into the venv (--prefix), so the venv needs no pip of its own;
    # --ignore-installed, or pip would first uninstall this interpreter's own (editable) threadflow.
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", "--no-compile"]
    subprocess.run([*pip, *offline_build(), "--prefix", str(venv), str(src)], check=True, capture_output=True)
    check = subprocess.run(
        [str(python), "-c", "import threadflow, sys; print(threadflow.__file__)"],
        cwd=where,  # not this repository, whose threadflow/ would shadow the installed one
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not check.startswith(str(venv)):
        raise RuntimeError(f"the venv imports threadflow from {check}, not from the installed tag")
    return python


def offline_build() -> list[str]:
    """pip options to build the tag with this interpreter's setuptools and wheel, touching no index.

    The test extra installs both; without them pip builds in isolation,
    fetching the build backend from its configured index or cache.
    """
    try:
        import setuptools
        import wheel  # noqa: F401 — setuptools needs it to build a wheel
    except ImportError:
        return []
    if int(setuptools.__version__.split(".")[0]) < 68:  # what the releases' pyproject.toml asks for
        return []
    return ["--no-build-isolation", "--no-index"]


def run_worker(python: pathlib.Path | str, output: pathlib.Path, options: list[str]) -> None:
    subprocess.run([str(python), str(WORKER), "--quiet", "-o", str(output), *options], cwd=output.parent, check=True)


def load(path: pathlib.Path) -> dict[str, list[float]]:
    suite = pyperf.BenchmarkSuite.load(str(path))
    return {bench.get_name(): list(bench.get_values()) for bench in suite.get_benchmarks()}


def merge(paths: list[pathlib.Path]) -> pyperf.BenchmarkSuite:
    """One suite holding every round's runs (pyperf's own format, for ``compare_to``)."""
    suite = pyperf.BenchmarkSuite.load(str(paths[0]))
    for path in paths[1:]:
        suite.add_runs(pyperf.BenchmarkSuite.load(str(path)))
    return suite


def fmt(seconds: float) -> str:
    return f"{seconds * 1e6:,.2f} µs"


def report(tag: str, rounds: list[dict[str, dict[str, list[float]]]]) -> None:
    """Means over all rounds, the ratio of the means, and the range of the per-round ratios."""
    names = list(rounds[0]["head"])
    print(f"\n## this tree vs {tag} ({len(rounds)} interleaved round(s); ratio < 1: this tree is faster)\n")
    print(f"{'benchmark':<14} {'this tree':>14} {tag:>14} {'ratio':>7}  per-round ratios")
    for name in names:
        head = [v for r in rounds for v in r["head"][name]]
        base = [v for r in rounds for v in r["tag"][name]]
        ratios = [statistics.mean(r["head"][name]) / statistics.mean(r["tag"][name]) for r in rounds]
        ratio = statistics.mean(head) / statistics.mean(base)
        spread = f"{min(ratios):.2f} to {max(ratios):.2f}"
        print(f"{name:<14} {fmt(statistics.mean(head)):>14} {fmt(statistics.mean(base)):>14} {ratio:>7.2f}  {spread}")
    print("(run_*: per run; stream_<n>: per chunk)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="v0.1.0")
    parser.add_argument("--quick", action="store_true", help="a smoke run: one round, one value each")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=4, help="pyperf worker processes per version per round")
    parser.add_argument("--values", type=int, default=3, help="values per pyperf worker process")
    parser.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--keep", type=pathlib.Path, help="keep the JSON results in this directory")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 1
        options = ["--debug-single-value"]
    else:
        options = ["--processes", str(args.processes), "--values", str(args.values)]
    if args.only:
        options += ["--only", args.only]
    with tempfile.TemporaryDirectory(prefix="threadflow-compare-") as tmp:
        where = pathlib.Path(tmp)
        started = time.perf_counter()
        tag_python = install_tag(args.tag, where)
        print(f"installed {args.tag} into a temporary venv in {time.perf_counter() - started:.1f} s")
        out = args.keep or where / "results"
        out.mkdir(parents=True, exist_ok=True)
        rounds = []
        for i in range(args.rounds):
            order = [("tag", tag_python), ("head", sys.executable)]
            results = {}
            for label, python in order if i % 2 == 0 else order[::-1]:
                path = out / f"{label}-{i}.json"
                path.unlink(missing_ok=True)
                run_worker(python, path, options)
                results[label] = load(path)
            rounds.append(results)
            print(f"round {i + 1}/{args.rounds} done")
        report(args.tag, rounds)
        if not args.quick:
            merged = {
                label: merge([out / f"{label}-{i}.json" for i in range(args.rounds)]) for label in ("tag", "head")
            }
            paths = {label: out / f"{label}.json" for label in merged}
            for label, suite in merged.items():
                suite.dump(str(paths[label]), replace=True)
            print("\n## pyperf compare_to (pooled values)\n")
            subprocess.run(
                [sys.executable, "-m", "pyperf", "compare_to", "--table", paths["tag"], paths["head"]], check=False
            )


if __name__ == "__main__":
    main()
