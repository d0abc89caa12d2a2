"""A real browser against the Flask (and Django) notes app under gunicorn: headless Chromium driven by Playwright.

Uses the system's Chromium (Debian's ``chromium`` package, installed by ``make test`` when run as
root); Playwright never downloads a browser here. The screenshot lands in tests/artifacts/.
"""

from __future__ import annotations

import html
import http.server
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lakebase.emulator.supervise import clean_environment, start_gunicorn, stop_process_group, wait_http_ok

from .apps_support import ARTIFACTS, FLASK_DIR, ensure_app_schema, free_port, note_count
from .django_support import DJANGO_DIR

CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("LAKEBASE_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                      shutil.which("chromium-browser")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@pytest.fixture
def app_url(emulator: Any, app_role: str, tmp_path: Path) -> Iterator[str]:
    yield from _serve(FLASK_DIR, emulator, app_role, tmp_path)


@pytest.fixture(scope="module")
def django_url(emulator: Any, app_role: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for the module's Django tests (it starts slowly: cheaper shared), with one worker."""
    yield from _serve(DJANGO_DIR, emulator, app_role, tmp_path_factory.mktemp("django"), workers=1)


def _serve(app_dir: Path, emulator: Any, app_role: str, tmp_path: Path, workers: int = 2) -> Iterator[str]:
    """The app of ``app_dir`` under gunicorn (``app:app``), as the app's service principal."""
    ensure_app_schema(emulator, app_role)
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = clean_environment({**emulator.app_env, "DATABRICKS_CONFIG_FILE": str(tmp_path / "nocfg")})
    proc = start_gunicorn(app_dir, env, port, workers, log)
    try:
        url = f"http://127.0.0.1:{port}"
        if wait_http_ok(url + "/healthz", 60, alive=lambda: proc.poll() is None) is None:
            pytest.fail("gunicorn did not become healthy:\n" + log.read_text(errors="replace")[-3000:])
        yield url
    finally:
        stop_process_group(proc)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                   "(pip install -e '.[dev]')")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium: install Debian's chromium package (apt-get install -y chromium; `make test` "
                    "does it when run as root) or set LAKEBASE_CHROMIUM to a Chromium binary")
    profile = tmp_path / "chromium-profile"  # a new, empty user data dir
    profile.mkdir()
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1000, "height": 900})
        context.set_default_timeout(30_000)
        try:
            yield context.new_page()
        finally:
            context.close()


def test_add_and_delete_a_note_in_a_real_browser(app_url: str, page: Any) -> None:
    add_and_delete_notes(app_url, page, "notes-flask.png")


def test_add_and_delete_a_note_in_the_django_app(django_url: str, page: Any) -> None:
    """The same with notes-django (its forms carry Django's CSRF token)."""
    add_and_delete_notes(django_url, page, "notes-django.png")


def add_and_delete_notes(app_url: str, page: Any, screenshot: str) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    page.goto(app_url)
    assert page.inner_text("h1") == "Hello from Lakebase!"
    assert page.locator("li[data-note-id]").count() >= 1

    content = f"Written in Chromium {uuid.uuid4().hex[:8]}"
    page.fill("#content", content)
    with page.expect_navigation():
        page.click("#add-note button[type=submit]")
    assert page.url.rstrip("/") == app_url
    first = page.locator("li[data-note-id]").first
    assert content in first.inner_text()

    # Markup in a note is shown as text, never run.
    attack = f'<img src=x onerror="alert(\'xss {uuid.uuid4().hex[:4]}\')">'
    page.fill("#content", attack)
    with page.expect_navigation():
        page.click("#add-note button[type=submit]")
    assert attack in page.locator("li[data-note-id]").first.inner_text()
    assert page.locator("li[data-note-id] img").count() == 0
    assert dialogs == []

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / screenshot
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000

    # Delete both through their buttons (forms; the browser says they come from the app's own page).
    for text in (attack, content):
        item = page.locator("li[data-note-id]", has_text=text)
        with page.expect_navigation():
            item.locator("button.delete").click()
        assert page.locator("li[data-note-id]", has_text=text).count() == 0

    # An empty note is refused with a message (the browser's own check is bypassed to reach the server).
    page.eval_on_selector("#content", "el => el.removeAttribute('required')")
    page.fill("#content", "   ")
    with page.expect_navigation():
        page.click("#add-note button[type=submit]")
    assert "must not be empty" in page.inner_text("#error")


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"], ids=["cross-site", "same-site-other-port"])
def test_a_form_on_another_origin_cannot_add_a_note(app_url: str, page: Any, emulator: Any, host: str) -> None:
    """CSRF: a page served from another origin (another site, or the same host on another port) posts a
    form to the app in the victim's browser; Chromium's Sec-Fetch-Site gives it away and the app refuses it."""
    forged_form_is_refused(app_url, page, emulator, host)


def test_a_form_on_another_origin_cannot_add_a_note_in_the_django_app(django_url: str, page: Any,
                                                                      emulator: Any) -> None:
    """The same against notes-django: Django's CSRF middleware refuses the forged form (no token; its Origin
    is another site's)."""
    forged_form_is_refused(django_url, page, emulator, "localhost")


def forged_form_is_refused(app_url: str, page: Any, emulator: Any, host: str) -> None:
    content = f"forged {uuid.uuid4().hex[:8]}"
    attack = (f'<!doctype html><form method="post" action="{html.escape(app_url)}/notes">'
              f'<input name="content" value="{html.escape(content)}"><button id="go">go</button></form>').encode()

    class Attacker(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(attack)))
            self.end_headers()
            self.wfile.write(attack)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Attacker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        before = note_count(emulator)
        page.goto(f"http://{host}:{server.server_address[1]}/")
        with page.expect_navigation():
            page.click("#go")
        assert page.url.startswith(app_url)
        assert "cross-origin request refused (CSRF protection)" in page.inner_text("#error")
        assert note_count(emulator) == before
        page.goto(app_url)
        assert content not in page.content()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
