"""The dashboard in a real browser: the system's Chromium, driven headless by Playwright.

Playwright's own browser download is never used: the tests launch the
Chromium the system has (Debian's ``chromium`` package, installed by
``.ci/run``) through ``executable_path``. Without it (or without the
``playwright`` package) the tests are skipped locally and fail under CI=true.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from threadflow import CancellationError, Workflow, active_runs, cancel_run, get_context
from threadflow.server import create_app, running_server
from threadflow.storage import SqliteStore

WAIT_MS = 10_000
CHROMIUM = os.environ.get("THREADFLOW_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# A run started from the page (the UI does not leak into the test's threads: gates are module events).
more = threading.Event()
gone = threading.Event()


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must run the browser tests (.ci/run installs Debian's chromium)")
    pytest.skip(reason)


try:
    from playwright.sync_api import BrowserContext, Page, expect, sync_playwright
except ModuleNotFoundError:  # pragma: no cover — the test extra has it
    sync_playwright = None


def talker(step_input: Any) -> Iterator[str]:
    """Two tokens, a third once the test says so, then waits to be cancelled."""
    yield "alpha "
    yield "beta "
    get_context().wait(more)
    yield "gamma "
    try:
        get_context().wait()
    except CancellationError:
        gone.set()
        raise


def quick(step_input: Any) -> str:
    return f"hello {step_input}"


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    if sync_playwright is None:
        _unavailable("the playwright package is not installed")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh user-data dir
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=ARGS, viewport={"width": 1100, "height": 700}
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    context.clear_cookies()
    opened = context.new_page()
    opened.set_default_timeout(WAIT_MS)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def gates() -> Iterator[None]:
    more.clear()
    gone.clear()
    yield
    more.set()
    for info in active_runs():  # a failed test must not leave its run parked (the leak check waits for them)
        cancel_run(info.run_id, "test over")


def _row(page: Page, run_id: str) -> Any:
    return page.locator(f'#runs tbody tr[data-run-id="{run_id}"]')


def test_start_watch_reload_and_cancel_a_run_from_the_page(page: Page, gates: None) -> None:
    workflow = Workflow("talker", steps=[talker])
    with running_server(create_app(workflow)) as url:
        page.goto(url)
        page.get_by_label("Workflow", exact=True).select_option("talker")
        page.get_by_label("Input (JSON, or plain text)").fill('"hi"')
        page.get_by_role("button", name="Start").click()
        tokens = page.locator("#events pre")
        expect(tokens).to_have_text("alpha beta ")
        run_id = page.locator("#run-id").inner_text()
        expect(page.locator("#run-status")).to_have_text(re.compile("running|waiting"))

        page.reload()  # resumes after the last event it showed: nothing twice
        expect(tokens).to_have_text("alpha beta ")
        more.set()
        expect(tokens).to_have_text("alpha beta gamma ")

        page.get_by_label("Reason (optional)").fill("seen enough")
        page.get_by_role("button", name="Cancel run").click()
        expect(page.locator("#run-status")).to_have_text("cancelled")
        expect(page.locator("#events li.end")).to_have_text("talkercancelled (requested): seen enough")
        assert gone.is_set()

        page.get_by_role("link", name="← all runs").click()
        row = _row(page, run_id)
        expect(row.locator('td[data-label="Status"]')).to_have_text("cancelled")
        expect(row.locator('td[data-label="Cause / reason"]')).to_have_text("requested: seen enough")
        expect(row.get_by_role("button")).to_have_count(0)  # no Cancel on a run that has ended


OTHER_PROCESS = textwrap.dedent(
    """
    import sys, threading
    from threadflow import Workflow, get_context
    from threadflow.storage import SqliteStore

    go = threading.Event()
    def parked(step_input):
        print("inside", flush=True)
        get_context().wait(go)
        return "done"

    with SqliteStore(sys.argv[1]) as store:
        workflow = Workflow("parked", steps=[parked], store=store)
        handle = workflow.run(None, background=True, run_id=sys.argv[2])
        sys.stdin.readline()
        go.set()
        print("ended", handle.result().status.value, flush=True)
    """
)


def test_the_table_follows_runs_of_another_process_live(page: Page, tmp_path: pathlib.Path) -> None:
    db = tmp_path / "runs.db"
    with SqliteStore(db) as store:
        workflow = Workflow("parked", steps=[quick], store=store)
        with running_server(create_app(workflow)) as url:
            page.goto(url)
            expect(page.locator("#live")).to_have_text("live")
            command = [sys.executable, "-c", OTHER_PROCESS, str(db), "elsewhere-1"]
            with subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            ) as other:
                try:
                    assert other.stdout is not None and other.stdin is not None
                    assert other.stdout.readline() == "inside\n"
                    row = _row(page, "elsewhere-1")
                    expect(row.locator('td[data-label="Status"]')).to_have_text(re.compile("running|waiting"))
                    expect(row.get_by_role("button", name="Cancel run elsewhere-1")).to_be_visible()
                    other.stdin.write("\n")
                    other.stdin.flush()
                    out, err = other.communicate(timeout=WAIT_MS / 1000)
                except BaseException:
                    other.kill()
                    raise
            assert other.returncode == 0, err
            assert out == "ended completed\n"
            expect(row.locator('td[data-label="Status"]')).to_have_text("completed")
            expect(row.get_by_role("button")).to_have_count(0)


def test_with_an_api_key_only_the_login_form_is_served(page: Page) -> None:
    workflow = Workflow("hello", steps=[quick])
    with running_server(create_app(workflow, api_key="s3cret")) as url:
        page.goto(url)
        expect(page.get_by_label("API key")).to_be_visible()
        assert page.locator("#runs").count() == 0
        assert page.request.get(f"{url}/runs").status == 401
        assert page.request.get(f"{url}/static/app.js").status == 401

        page.get_by_label("API key").fill("wrong")
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("alert")).to_have_text("Wrong API key.")

        page.get_by_label("API key").fill("s3cret")
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#live")).to_have_text("live")
        cookie = next(c for c in page.context.cookies() if c["name"] == "threadflow_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.evaluate("document.cookie") == ""  # the page's scripts cannot read the session

        # The session opens the SSE and list routes; a change without the CSRF header is refused.
        assert page.request.get(f"{url}/runs").status == 200
        refused = page.evaluate(
            """url => fetch(url + "/workflows/hello/runs", {method: "POST", body: "{}",
                 headers: {"Content-Type": "application/json"}}).then(r => r.status)""",
            url,
        )
        assert refused == 403
        page.get_by_label("Input (JSON, or plain text)").fill("world")
        page.get_by_role("button", name="Start").click()
        expect(page.locator("#events li.end")).to_have_text("completed")


def test_a_phone_sized_screen_gets_cards_and_a_screenshot_is_saved(
    page: Page, tmp_path: pathlib.Path, gates: None
) -> None:
    workflow = Workflow("talker", steps=[talker])
    greeter = Workflow("greeter", steps=[quick])
    with running_server(create_app([workflow, greeter])) as url:
        greeter.run("there", run_id="greeted-1")
        parked = workflow.run("x", background=True, run_id="talking-1")
        cancelled = workflow.run("x", background=True, run_id="cancelled-1")
        try:
            page.goto(url)
            expect(_row(page, "cancelled-1").locator('td[data-label="Step"]')).to_have_text("talker")
            cancelled.cancel("not needed")
            expect(_row(page, "cancelled-1").locator('td[data-label="Status"]')).to_have_text("cancelled")
            expect(_row(page, "talking-1").locator('td[data-label="Status"]')).to_have_text(
                re.compile("running|waiting")
            )
            expect(_row(page, "greeted-1").locator('td[data-label="Status"]')).to_have_text("completed")
            shot = pathlib.Path(os.environ.get("THREADFLOW_SCREENSHOT") or tmp_path / "dashboard.png")
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

            page.set_viewport_size({"width": 375, "height": 740})
            cell = _row(page, "talking-1").locator('td[data-label="Status"]')
            assert cell.evaluate("td => getComputedStyle(td).display") == "block"
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            expect(page.get_by_role("button", name="Cancel run talking-1")).to_be_visible()
        finally:
            page.set_viewport_size({"width": 1100, "height": 700})
            parked.cancel("test over")
            cancelled.cancel("test over")
            parked.wait(10)
            cancelled.wait(10)
