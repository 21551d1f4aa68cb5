"""The dashboard in a real browser: headless Chromium (Debian's `chromium` package) driven by
Playwright against a uvicorn server process, jobs submitted through the API and run by a real
worker. Screenshots of each page go to test-output/dashboard/ (git-ignored) and the test's
tmp_path."""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import playwright.sync_api as playwright_api
import pytest

from app.embedded_pg import free_port
from tests.acceptance.procs import ROOT, cli, scalar, skiplock_env, start, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.slow

TOKENS = "admintok,readtok:read"
SHOTS = ROOT / "test-output" / "dashboard"


def api(base: str, method: str, path: str, body: Any = None) -> Any:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode() if body is not None else None,
                                 method=method, headers={"Authorization": "Bearer admintok",
                                                         "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310
        return json.loads(r.read())


def _up(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as r:  # noqa: S310
            return bool(r.status == 200)
    except OSError:
        return False


@pytest.fixture
def server(db_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = skiplock_env(db_url, api_tokens=TOKENS)
    proc = start(["api", "--port", str(port)], env, tmp_path / "api.log")
    try:
        wait_for(lambda: _up(base), 30, "the API to answer /health")
        for i in range(6):
            api(base, "POST", "/jobs", {"task": "echo", "args": {"message": f"hello {i}"}})
        api(base, "POST", "/jobs", {"task": "always_fail", "args": {"reason": "boom-1234"}, "max_attempts": 1})
        api(base, "POST", "/jobs", {"task": "echo", "args": {"message": "later"}, "queue": "mail", "delay": 3600})
        cli(["worker", "--burst", "--concurrency", "2"], env)  # runs them: 6 succeed, one fails for good
        yield base
    finally:
        proc.terminate()
        proc.wait(30)
        log = (tmp_path / "api.log").read_text()
        assert "Traceback" not in log, log[-5000:]


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:  # not skipped: a run without the browser has not tested the dashboard
        pytest.fail("no chromium on PATH: install the distribution's package (apt-get install chromium; "
                    ".ci/run does it)")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def shot(page: Any, tmp_path: Path, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    shutil.copy(SHOTS / f"{name}.png", tmp_path / f"{name}.png")


def log_in(page: Any, base: str, token: str) -> None:
    page.goto(base + "/")
    assert "/ui/login" in page.url
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")


def test_operating_the_queue_from_the_dashboard(server: str, browser: Any, db_url: str, tmp_path: Path):
    failed_id = scalar(db_url, "SELECT id::text FROM skiplock.jobs WHERE state = 'failed'")
    assert failed_id
    page = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
    page.on("dialog", lambda d: d.accept())  # every action asks for confirmation

    page.goto(server + "/ui/jobs")
    assert "/ui/login" in page.url
    shot(page, tmp_path, "login")
    log_in(page, server, "admintok")
    row = page.locator('tr[data-queue="default"]')
    assert row.locator("td").nth(4).inner_text() == "6" and row.locator("td").nth(5).inner_text() == "1"
    assert page.locator('tr[data-queue="mail"] td').nth(2).inner_text() == "1"  # scheduled
    assert "6 succeeded, 1 failed" in page.locator("#charts").inner_text()
    shot(page, tmp_path, "overview")

    # filter the list to the failed job, open it
    page.click("text=Jobs")
    page.select_option("select[name=state]", "failed")
    page.click("#filters button[type=submit]")
    assert page.locator("tr[data-job]").count() == 1
    shot(page, tmp_path, "jobs")
    page.fill("input[name=q]", "boom-1234")
    page.select_option("select[name=state]", "")
    page.click("#filters button[type=submit]")
    assert [page.locator("tr[data-job]").get_attribute("data-job")] == [failed_id]
    page.click(f"tr[data-job='{failed_id}'] a")
    assert "boom-1234" in page.locator("pre.traceback").first.inner_text()
    assert page.locator("#job-state").inner_text() == "failed"
    shot(page, tmp_path, "job")

    # retry it with a click: the page shows it queued again, and so does the database
    page.click("button[data-action=Retry]")
    page.wait_for_selector("#flash")
    assert page.locator("#job-state").inner_text() == "queued"
    assert scalar(db_url, "SELECT state::text FROM skiplock.jobs WHERE id = %s", (failed_id,)) == "queued"
    shot(page, tmp_path, "job-retried")

    # a batch's progress: the list, then its page
    batch = scalar(db_url, "SELECT skiplock.open_batch('batch_done', '{\"message\": \"end\"}')::text")
    for i in range(3):
        scalar(db_url, "SELECT skiplock.enqueue('echo', jsonb_build_object('message', %s::text), batch_id => %s)",
               (str(i), batch))
    page.click("text=Batches")
    assert page.locator(f"tr[data-batch='{batch}'] td").nth(3).inner_text() == "3"
    page.click(f"tr[data-batch='{batch}'] a")
    assert page.locator("#percent").inner_text() == "0.0%"
    assert page.locator("tr[data-job]").count() == 3
    shot(page, tmp_path, "batch")

    # one of its jobs parked for review: resumed with data typed on its page, kept across a live refresh
    parked = scalar(db_url, "SELECT min(id::text) FROM skiplock.jobs WHERE batch_id = %s", (batch,))
    scalar(db_url, "UPDATE skiplock.jobs SET state = 'running', attempt = 1, worker_id = 'w', "
                   "lease_expires_at = now() + interval '1 minute' WHERE id = %s RETURNING 1", (parked,))
    scalar(db_url, "UPDATE skiplock.jobs SET state = 'waiting', attempt = 0, lease_expires_at = NULL, "
                   "parked = jsonb_build_object('reason', 'score 0.41 too low', 'at', now()) WHERE id = %s RETURNING 1",
           (parked,))
    page.reload()
    assert [page.locator("#counts td").nth(i).inner_text() for i in (2, 4)] == ["2", "1"]  # queued, in review
    page.goto(f"{server}/ui/jobs/{parked}")
    assert "score 0.41 too low" in page.locator("#parked").inner_text()
    page.fill("textarea[name=data]", '{"approved": true, "by": "ana"}')
    page.wait_for_timeout(6000)  # a live refresh (every 5 s) must not wipe what was typed
    assert page.locator("textarea[name=data]").input_value() == '{"approved": true, "by": "ana"}'
    shot(page, tmp_path, "parked")
    page.click("button[data-action='Resume with data']")
    page.wait_for_selector("#flash")
    assert page.locator("#job-state").inner_text() == "queued"
    review = scalar(db_url, "SELECT review FROM skiplock.jobs WHERE id = %s", (parked,))
    assert review == {"approved": True, "by": "ana"}

    # pause a queue
    page.goto(server + "/")
    page.click("tr[data-queue='default'] button[data-action=Pause]")
    page.wait_for_selector("#flash")
    assert page.locator("tr[data-queue='default'] .queue-state").inner_text() == "paused"
    assert scalar(db_url, "SELECT paused FROM skiplock.queues WHERE name = 'default'") is True

    # a form posted without this session's CSRF token is refused
    page.evaluate("""() => { const f = document.createElement('form'); f.method = 'post';
        f.action = '/ui/queues/default/resume'; const i = document.createElement('input'); i.name = 'csrf';
        i.value = 'forged'; f.appendChild(i); document.body.appendChild(f); f.submit(); }""")
    page.wait_for_selector("#error-message")
    assert "CSRF" in page.locator("#error-message").inner_text()
    shot(page, tmp_path, "csrf-refused")
    assert scalar(db_url, "SELECT paused FROM skiplock.queues WHERE name = 'default'") is True


def test_a_read_only_token_sees_everything_and_can_change_nothing(server: str, browser: Any, db_url: str,
                                                                  tmp_path: Path):
    failed_id = scalar(db_url, "SELECT id::text FROM skiplock.jobs WHERE state = 'failed'")
    page = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
    log_in(page, server, "readtok")
    assert page.locator("#role").inner_text() == "read"
    assert page.locator('tr[data-queue="default"]').count() == 1
    assert page.locator("button[data-action]").count() == 0  # no action offered
    page.goto(f"{server}/ui/jobs/{failed_id}")
    assert "boom-1234" in page.content() and page.locator("button[data-action]").count() == 0
    shot(page, tmp_path, "job-read-only")
    # the form it would have posted, with its own valid CSRF token, is refused all the same
    page.evaluate("""(id) => { const f = document.createElement('form'); f.method = 'post';
        f.action = '/ui/jobs/' + id + '/retry'; const i = document.createElement('input'); i.name = 'csrf';
        i.value = document.querySelector('input[name=csrf]').value; f.appendChild(i); document.body.appendChild(f);
        f.submit(); }""", failed_id)
    page.wait_for_selector("#error-message")
    assert "role (read)" in page.locator("#error-message").inner_text()
    assert scalar(db_url, "SELECT state::text FROM skiplock.jobs WHERE id = %s", (failed_id,)) == "failed"
