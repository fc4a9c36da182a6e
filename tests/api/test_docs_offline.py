"""/docs and /redoc on a host with no way out: Swagger UI and ReDoc are served by the API
itself, from the installed package, never from a CDN.

The browser here reaches 127.0.0.1 and nothing else: every other host name fails to
resolve, and anything not on loopback (IP literals too) goes to a proxy that refuses
connections (Chromium never sends loopback through a proxy). Its performance log records
every request the pages make.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from api.docs import POLICY
from tests.conftest import Services
from tests.support.browser import ARTIFACTS, start_chrome

# What FastAPI's default /docs loads: the browser below must not be able to fetch it.
CDN = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css"
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def offline() -> Iterator[Chrome]:
    """A headless Chromium that reaches 127.0.0.1 only, logging its requests and console."""
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        driver = start_chrome(
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            f"--proxy-server=http://127.0.0.1:{dead.getsockname()[1]}",
            capabilities={"goog:loggingPrefs": {"performance": "ALL", "browser": "ALL"}},
        )
        try:
            yield driver
        finally:
            driver.quit()


@pytest.fixture
def browser(offline: Chrome, services: Services) -> Chrome:
    """The offline browser, shown unable to fetch the CDN, its logs emptied."""
    offline.get(f"{services.api}/healthz")
    reached = offline.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {mode: 'no-cors'}).then(() => done(true), () => done(false));",
        CDN,
    )
    assert reached is False, "the browser reached the CDN: this test would prove nothing"
    offline.get_log("performance")  # each test reads its own page's requests only
    offline.get_log("browser")
    return offline


@pytest.fixture(scope="module")
def spec(services: Services) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{services.api}/openapi.json").json()
    return document


def operations(spec: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """operationId -> (METHOD, path), for every operation of the API."""
    return {
        operation["operationId"]: (method.upper(), path)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }


@dataclass(frozen=True)
class Traffic:
    """What the page asked for since the browser's logs were last read."""

    sent: list[str]  # URLs requested over the network (http, https, ws, wss)
    blocked: list[str]  # URLs the page's Content-Security-Policy stopped in the browser
    script_errors: list[str]  # uncaught JavaScript errors


def traffic(browser: Chrome) -> Traffic:
    urls: dict[str, str] = {}
    blocked: set[str] = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason"):
            blocked.add(params["requestId"])
    return Traffic(
        sent=[
            url
            for key, url in urls.items()
            if key not in blocked and urlsplit(url).scheme in ("http", "https", "ws", "wss")
        ],
        blocked=[url for key, url in urls.items() if key in blocked],
        script_errors=[
            entry["message"]
            for entry in browser.get_log("browser")
            if entry["source"] == "javascript" and entry["level"] == "SEVERE"
        ],
    )


def assert_only_loopback(seen: Traffic) -> None:
    """Every request went to 127.0.0.1; anything else was stopped before it left the
    browser; and the page's own files were never among what was stopped."""
    assert seen.sent, "the performance log recorded no request at all"
    assert [url for url in seen.sent if urlsplit(url).hostname != "127.0.0.1"] == []
    assert [url for url in seen.blocked if urlsplit(url).hostname == "127.0.0.1"] == []
    assert seen.script_errors == []


class _Assets(HTMLParser):
    """The URLs of a page's scripts, stylesheets, icons, images and frames."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value and tag in ("script", "link", "img", "iframe"):
                self.urls.append(value)


def page_assets(services: Services, path: str) -> list[str]:
    """The absolute URLs of what the HTML served at ``path`` loads."""
    page = httpx.get(f"{services.api}{path}")  # no API key: the pages are public
    assert page.status_code == 200
    parser = _Assets()
    parser.feed(page.text)
    # Swagger UI's inline bootstrap names the spec's URL too.
    parser.urls += re.findall(r"url: *'([^']+)'", page.text)
    return [urljoin(f"{services.api}{path}", url) for url in parser.urls]


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_pages_load_their_files_from_the_api_itself_without_a_key(
    services: Services, path: str
) -> None:
    assets = page_assets(services, path)
    assert any(url.endswith(".js") for url in assets)
    for url in assets:
        assert url.startswith(f"{services.api}/"), url
        assert httpx.get(url).status_code == 200, url
    policy = httpx.get(f"{services.api}{path}").headers.get("content-security-policy")
    assert policy == POLICY


@pytest.mark.usefixtures("low_rate_limit")
def test_the_pages_and_their_files_are_not_rate_limited(services: Services) -> None:
    assets = page_assets(services, "/docs") + page_assets(services, "/redoc")
    for _ in range(3):  # over the 5 a minute the fixture allows a key
        for url in assets:
            assert httpx.get(url).status_code == 200, url


def test_swagger_ui_lists_every_operation_with_no_internet(
    browser: Chrome, services: Services, spec: dict[str, Any]
) -> None:
    expected = set(operations(spec).values())
    assert {("POST", "/v1/jobs"), ("GET", "/v1/batches/{batch_id}")} <= expected

    browser.get(f"{services.api}/docs")

    def listed(_: Any) -> bool:
        blocks = browser.execute_script(
            "return Array.from(document.querySelectorAll('.opblock'), block => ["
            "  block.querySelector('.opblock-summary-method').textContent,"
            "  block.querySelector('.opblock-summary-path').getAttribute('data-path')])"
        )
        shown.clear()
        shown.update((method, path) for method, path in blocks)
        return shown == expected

    shown: set[tuple[str, str]] = set()
    try:
        WebDriverWait(browser, 30).until(listed)
    except TimeoutException:
        assert shown == expected, "Swagger UI never listed the API's operations"
    browser.save_screenshot(str(ARTIFACTS / "docs-swagger.png"))

    # "Try it out" still calls the API under the page's Content-Security-Policy.
    block = browser.find_element(By.ID, "operations-ops-healthz_healthz_get")
    block.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
    try_it = ".try-out__btn"
    WebDriverWait(browser, 10).until(lambda _: block.find_elements(By.CSS_SELECTOR, try_it))
    block.find_element(By.CSS_SELECTOR, try_it).click()
    block.find_element(By.CSS_SELECTOR, ".execute").click()
    status = ".live-responses-table tbody .response-col_status"
    WebDriverWait(browser, 10).until(lambda _: block.find_elements(By.CSS_SELECTOR, status))
    assert block.find_element(By.CSS_SELECTOR, status).text == "200"

    seen = traffic(browser)
    assert f"{services.api}/healthz" in seen.sent
    assert_only_loopback(seen)


def test_redoc_lists_every_operation_in_its_side_menu_with_no_internet(
    browser: Chrome, services: Services, spec: dict[str, Any]
) -> None:
    # operationId -> the method and the summary its menu item shows
    expected = {
        operation_id: (method.lower(), spec["paths"][path][method.lower()]["summary"])
        for operation_id, (method, path) in operations(spec).items()
    }
    assert {"create_job_v1_jobs_post", "get_batch_v1_batches__batch_id__get"} <= set(expected)

    browser.get(f"{services.api}/redoc")

    def listed(_: Any) -> bool:
        items = browser.execute_script(
            "return Array.from(document.querySelectorAll('li[data-item-id*=\"/operation/\"]'),"
            "  item => [item.getAttribute('data-item-id'),"
            "           item.querySelector('.operation-type').getAttribute('type'),"
            "           item.querySelector('label > span:last-child').textContent])"
        )
        shown.clear()
        shown.update(
            {item_id.rsplit("/", 1)[-1]: (method, text) for item_id, method, text in items}
        )
        return shown == expected

    shown: dict[str, tuple[str, str]] = {}
    try:
        WebDriverWait(browser, 30).until(listed)
    except TimeoutException:
        assert shown == expected, "ReDoc never listed the API's operations"
    browser.save_screenshot(str(ARTIFACTS / "docs-redoc.png"))
    seen = traffic(browser)
    assert_only_loopback(seen)
    # ReDoc shows Redocly's logo from Redocly's CDN whatever its options: the policy stops it.
    assert set(seen.blocked) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}
