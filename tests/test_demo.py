"""The README's main job: `threadflow demo`, streamed and cancelled from another thread."""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "threadflow", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_demo_is_cancelled_from_another_thread_and_summarises() -> None:
    result = run_cli("demo", "--cancel-after", "1.0", "--tokens-per-second", "40")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "── researcher ──" in out
    assert "status:  cancelled" in out
    assert "cause:   requested" in out
    assert "cancel landed in" in out
    assert "step:    researcher" in out or "step:    writer" in out


def test_demo_without_cancel_completes() -> None:
    result = run_cli("demo", "--no-cancel", "--tokens-per-second", "2000")
    assert result.returncode == 0, result.stderr
    assert "── writer ──" in result.stdout
    assert "status:  completed" in result.stdout
    assert "cancel landed" not in result.stdout


def test_ctrl_c_during_the_demo_exits_130_quietly_with_the_summary() -> None:
    command = [sys.executable, "-m", "threadflow", "demo", "--no-cancel", "--tokens-per-second", "20"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8") as demo:
        assert demo.stdout is not None
        try:
            while "── researcher ──" not in demo.stdout.readline():  # a token was flushed after it: streaming
                assert demo.poll() is None, "the demo ended before it streamed"
            demo.send_signal(signal.SIGINT)  # Ctrl+C
            out, err = demo.communicate(timeout=30)
        finally:
            demo.kill()
    assert demo.returncode == 130, err
    assert err == ""  # no traceback, nothing else
    assert "── summary ──" in out and "status:  " in out


def test_demo_rejects_bad_options_with_usage_exit_code() -> None:
    for args, flag in [
        (["--cancel-after", "-1"], "argument --cancel-after:"),
        (["--cancel-after", "nan"], "argument --cancel-after:"),
        (["--tokens-per-second", "abc"], "argument --tokens-per-second:"),
    ]:
        result = run_cli("demo", *args)
        assert result.returncode == 2
        assert len(result.stderr.splitlines()) == 1 and flag in result.stderr, result.stderr
        assert result.stdout == ""  # refused before anything ran
    assert run_cli("no-such-command").returncode == 2


def test_console_script_is_installed() -> None:
    script = pathlib.Path(sys.executable).parent / "threadflow"  # installed beside this interpreter
    assert script.exists(), "the threadflow console script is not installed"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and "demo" in result.stdout
