"""The documentation site, built strictly and checked in a real browser.

``mkdocs build --strict`` (every warning an error) into a temporary directory,
served by ``python -m http.server`` on 127.0.0.1 in a process of its own, opened
in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by
selenium): every internal link of every page is followed (each must answer 200
and each ``#anchor`` must name an element of its page), the site's search must
find ``atomic_write``, and screenshots of the home page and the API page are
saved, under the test's temporary directory and in ``docs-screenshots/`` at the
root of the checkout (ignored by git), for people to look at.

The link checker is held to a broken page too (a missing page and a missing
anchor planted beside the site), which it must report: a checker that finds
nothing on a good site has only shown something if it finds the planted faults.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urldefrag, urljoin, urlparse

import pytest

from tests.harness.require import require, require_tools

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "docs-screenshots"
WAIT = 60.0  # seconds a condition may take on a busy machine before the test fails


def require_docs_tools() -> None:
    require_tools("chromium", "chromedriver")
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python", "selenium"):
        require(
            importlib.util.find_spec(module.split(".")[0]) is not None,
            f"needs {module} (pip install -e '.[docs]')",
        )


def build_site(site: Path) -> str:
    """Build the site strictly into *site*; return mkdocs' output."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "WARNING" not in output, output
    return output


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The built site on http://127.0.0.1:PORT/, and its directory."""
    require_docs_tools()
    site = tmp_path / "site"
    build_site(site)
    server = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "0"],
        cwd=site,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        # "Serving HTTP on 127.0.0.1 port 41237 (http://127.0.0.1:41237/) ...": the
        # server listens before it says so, so no wait is needed after this line.
        line = server.stdout.readline()
        match = re.search(r"port (\d+)", line)
        assert match, f"http.server said {line!r}"
        yield f"http://127.0.0.1:{match[1]}/", site
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stdout.close()  # type: ignore[union-attr]


@pytest.fixture
def browser() -> Iterator[Any]:
    require_docs_tools()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root, as CI runs
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
    ):
        options.add_argument(argument)
    # The driver's path is given, so selenium's manager downloads nothing.
    service = Service(executable_path=shutil.which("chromedriver") or "chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=WAIT) as answer:  # noqa: S310 - loopback
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code


def check_links(driver: Any, base: str, start: str) -> tuple[list[str], list[str]]:
    """Follow every internal link from *start*: (pages visited, problems found).

    Each page is loaded in the browser; each link on it to *base* must answer 200,
    and an HTML page it names is visited in turn; each ``#anchor`` must be the id
    of an element of the page it points at (as the browser built it, scripts run).
    """
    pages: list[str] = []
    ids: dict[str, set[str]] = {}
    links: dict[str, set[str]] = {}  # page -> the pages linking to it with anchors
    problems: list[str] = []
    queue = [start]
    seen = {start}
    while queue:
        page = queue.pop(0)
        code = status(page)
        if code != 200:
            problems.append(f"{page}: HTTP {code}")
            continue
        driver.get(page)
        pages.append(page)
        found = driver.execute_script(
            "return [Array.from(document.querySelectorAll('a[href]')).map(a => a.href),"
            " Array.from(document.querySelectorAll('[id]')).map(e => e.id)]"
        )
        hrefs, page_ids = found
        ids[page] = set(page_ids)
        for href in hrefs:
            target, fragment = urldefrag(urljoin(page, href))
            if not target.startswith(base):
                continue
            if fragment:
                links.setdefault(target, set()).add(f"{fragment}\x00{page}")
            if target in seen:
                continue
            seen.add(target)
            if urlparse(target).path.endswith(("/", ".html")):
                queue.append(target)
            elif (code := status(target)) != 200:
                problems.append(f"{target} (linked from {page}): HTTP {code}")
    for target, anchored in sorted(links.items()):
        for entry in sorted(anchored):
            fragment, source = entry.split("\x00")
            if target in ids and unquote(fragment) not in ids[target]:
                problems.append(f"{target}#{fragment} (linked from {source}): no such anchor")
            elif target not in ids and target not in pages:
                problems.append(f"{target}#{fragment} (linked from {source}): page not loaded")
    return pages, problems


def test_docs_site_in_chromium(
    served: tuple[str, Path], browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    base, site = served

    pages, problems = check_links(browser, base, base)
    assert problems == []
    # Every page of the nav was reached by following links from the home page.
    for page in ("library/", "recipes/", "guarantees/", "contract/", "how-it-works/",
                 "verified-on/", "speed/", "benchmarks/", "migration/", "cli/", "crashcheck/",
                 "proving/", "api/", "development/"):  # fmt: skip
        assert base + page in pages, page

    # The checker itself: a page with a missing page and a missing anchor must be caught.
    (site / "planted-broken.html").write_text(
        '<a href="no-such-page/">gone</a> <a href="api/#crashsafe.no_such_name">gone</a>'
        ' <a href="index.html">home</a>'
    )
    _, planted = check_links(browser, base, base + "planted-broken.html")
    assert any("no-such-page/" in p and "HTTP 404" in p for p in planted), planted
    assert any("crashsafe.no_such_name" in p and "no such anchor" in p for p in planted), planted

    # The API reference holds the public names, rendered from the docstrings.
    browser.get(base + "api/")
    for name in ("crashsafe.atomic_write", "crashsafe.AtomicFile", "crashsafe.aio",
                 "crashsafe.compat.atomicwrites", "crashsafe.crashcheck.explore",
                 "crashsafe.doctor.diagnose", "crashsafe.errors.NotDurableError"):  # fmt: skip
        assert browser.find_elements(By.ID, name), name
    # Sphinx roles in the docstrings became links (followed above like every other link).
    assert ":func:`" not in browser.page_source
    assert browser.find_elements(
        By.CSS_SELECTOR, "a.autorefs-internal[href$='#crashsafe.atomic_open']"
    )
    shots = tmp_path / "screenshots"
    shots.mkdir()
    assert browser.save_screenshot(str(shots / "api.png"))

    # Search: typed into the search box; results are waited for, not slept for.
    browser.get(base)
    assert browser.save_screenshot(str(shots / "home.png"))
    # At this width the search box is in the header itself (no toggle to open first).
    box = WebDriverWait(browser, WAIT).until(
        expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, "input.md-search__input"))
    )
    box.click()
    box.send_keys("atomic_write")
    WebDriverWait(browser, WAIT).until(
        lambda driver: any(
            "atomic_write" in item.text
            for item in driver.find_elements(By.CSS_SELECTOR, ".md-search-result__item")
        )
    )
    results = browser.find_elements(By.CSS_SELECTOR, ".md-search-result__item a")
    assert any("/api/" in (a.get_attribute("href") or "") for a in results)
    assert browser.save_screenshot(str(shots / "search.png"))

    for shot in ("home.png", "api.png", "search.png"):
        assert (shots / shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    SCREENSHOTS.mkdir(exist_ok=True)
    for saved in shots.iterdir():
        shutil.copyfile(saved, SCREENSHOTS / saved.name)
    with capsys.disabled():
        print(f"\ndocs site: {len(pages)} pages checked; screenshots in {shots} and {SCREENSHOTS}")
