"""The dashboard in a real browser: Debian's headless Chromium driven by Selenium.

Screenshots of the main pages are kept in test-artifacts/ for people to look at.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait
from sqlalchemy import update

from relightq.batches.models import Batch
from relightq.db import session_scope
from tests.batches.helpers import wait_batch
from tests.conftest import Services, TenantKey
from tests.dashboard.rows import batch_row
from tests.jobs.test_end_to_end import shop_image, wait_for
from tests.support.browser import ARTIFACTS, start_chrome
from tests.support.receiver import Receiver

pytestmark = pytest.mark.usefixtures("celery_worker")


@pytest.fixture(scope="session")
def chrome() -> Iterator[WebDriver]:
    """One headless Chromium for the session (Debian's chromium + chromium-driver)."""
    driver = start_chrome()
    yield driver
    driver.quit()


@pytest.fixture
def browser(chrome: WebDriver, services: Services) -> Iterator[WebDriver]:
    """The browser with no session cookie."""
    chrome.get(f"{services.api}/dashboard/login")
    chrome.delete_all_cookies()
    yield chrome


def log_in(browser: WebDriver, services: Services, key: str) -> None:
    browser.get(f"{services.api}/dashboard/login")
    browser.find_element(By.ID, "api_key").send_keys(key)
    press(browser, "login")
    assert "/dashboard/batches" in browser.current_url


def press(browser: WebDriver, element_id: str) -> None:
    """Click a form's button and wait until the page it leads to has replaced this one."""
    page = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.ID, element_id).click()
    WebDriverWait(browser, 20).until(lambda _: replaced(page))


def replaced(page: WebElement) -> bool:
    """``staleness_of``, also for the answer Chromium gives when asked mid-navigation."""
    try:
        page.is_enabled()
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise
    return False


def wait_until(check: Callable[[], Any], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.1)


def screenshot(browser: WebDriver, name: str) -> None:
    browser.save_screenshot(str(ARTIFACTS / f"dashboard-{name}.png"))


def images_loaded(browser: WebDriver, selector: str) -> list[int]:
    widths: list[int] = browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), i => i.naturalWidth)",
        selector,
    )
    return widths


def catalog_batch(api: httpx.Client, count: int, **fields: Any) -> str:
    _, url = shop_image("dashboard/product.png")
    items = [{"subject_image": url, "external_id": f"SKU-{n}"} for n in range(count)]
    body = {"name": "spring catalog", "defaults": {"prompt": "studio"}, "items": items, **fields}
    return str(api.post("/v1/batches", json=body).json()["id"])


def test_login_is_required_and_a_bad_key_is_refused(browser: WebDriver, services: Services) -> None:
    browser.get(f"{services.api}/dashboard/batches")
    assert "/dashboard/login" in browser.current_url
    browser.find_element(By.ID, "api_key").send_keys("rq_not_a_key")
    press(browser, "login")
    assert "not valid" in browser.find_element(By.ID, "login-error").text
    screenshot(browser, "login")


def test_batches_show_live_progress_and_counts(
    browser: WebDriver,
    services: Services,
    tenant: TenantKey,
    api: httpx.Client,
    simulator: httpx.Client,
) -> None:
    simulator.post("/admin/config", json={"latency": 0.4}).raise_for_status()
    batch_id = catalog_batch(api, 16)
    log_in(browser, services, tenant.key)

    row = browser.find_element(By.CSS_SELECTOR, f'[data-batch="{batch_id}"]')
    first = float(row.find_element(By.TAG_NAME, "progress").get_attribute("value") or 0)
    screenshot(browser, "batches")
    # No reload: the bar moves by itself as items finish.
    wait_until(
        lambda: (
            float(row.find_element(By.TAG_NAME, "progress").get_attribute("value") or 0) > first
        ),
        timeout=30,
    )
    wait_batch(api, batch_id, "completed", timeout=60)
    wait_until(lambda: row.find_element(By.CSS_SELECTOR, '[data-field="succeeded"]').text == "16")
    assert row.find_element(By.CSS_SELECTOR, '[data-field="status"]').text == "completed"

    notice = browser.find_element(By.ID, "new-batches")
    assert not notice.is_displayed()
    catalog_batch(api, 1)  # submitted after the page loaded: the page says so by itself
    wait_until(notice.is_displayed)


def test_a_batch_whose_items_all_fail_turns_failed_and_red_without_a_reload(
    browser: WebDriver,
    services: Services,
    tenant: TenantKey,
    api: httpx.Client,
    simulator: httpx.Client,
) -> None:
    config = {"latency": 0.5, "fail_500_rate": 1.0}
    simulator.post("/admin/config", json=config).raise_for_status()
    batch_id = catalog_batch(api, 4)
    log_in(browser, services, tenant.key)  # the list, loaded while the batch still runs

    status = browser.find_element(
        By.CSS_SELECTOR, f'[data-batch="{batch_id}"] [data-field="status"]'
    )
    assert status.text in ("queued", "running")
    wait_batch(api, batch_id, "completed", timeout=60)
    # The live refresh, not only the server-rendered page, calls it failed, in red.
    wait_until(lambda: status.text == "failed", timeout=10)
    assert status.value_of_css_property("color") == "rgba(179, 38, 30, 1)"  # --bad
    screenshot(browser, "batches-failed")


def test_a_batch_page_offers_retry_as_soon_as_an_item_fails(
    browser: WebDriver,
    services: Services,
    tenant: TenantKey,
    api: httpx.Client,
    simulator: httpx.Client,
) -> None:
    simulator.post("/admin/config", json={"latency": 1.0}).raise_for_status()
    # Twelve identical items: with reuse, all but the first would copy its picture and
    # never call Segmind, so none could fail.
    batch_id = catalog_batch(api, 12, reuse=False)
    log_in(browser, services, tenant.key)
    browser.get(f"{services.api}/dashboard/batches/{batch_id}")
    button = browser.find_element(By.ID, "retry-failed")
    assert not button.is_displayed()  # nothing has failed yet

    simulator.post("/admin/config", json={"fail_500_rate": 1.0}).raise_for_status()
    wait_until(button.is_displayed, timeout=60)  # no reload
    simulator.post("/admin/config", json={"fail_500_rate": 0.0}).raise_for_status()
    wait_batch(api, batch_id, "completed")
    press(browser, "retry-failed")
    assert wait_batch(api, batch_id, "completed")["counts"]["succeeded"] == 12


def test_a_batch_page_shows_before_and_after_and_retries_its_failures(
    browser: WebDriver,
    services: Services,
    tenant: TenantKey,
    api: httpx.Client,
    simulator: httpx.Client,
) -> None:
    batch_id = catalog_batch(api, 3)
    wait_batch(api, batch_id, "completed")
    simulator.post("/admin/config", json={"fail_500_rate": 1.0}).raise_for_status()
    failing = catalog_batch(api, 2)
    wait_batch(api, failing, "completed")
    simulator.post("/admin/config", json={"fail_500_rate": 0.0}).raise_for_status()
    log_in(browser, services, tenant.key)

    browser.get(f"{services.api}/dashboard/batches/{batch_id}")
    wait_until(lambda: all(w > 0 for w in images_loaded(browser, ".item img")))
    assert len(images_loaded(browser, ".item img")) == 6  # three before, three after
    screenshot(browser, "batch-gallery")

    browser.get(f"{services.api}/dashboard/batches/{failing}")
    press(browser, "retry-failed")
    done = wait_batch(api, failing, "completed")
    assert done["counts"]["succeeded"] == 2


def test_a_batch_page_follows_credits_saved_and_a_spent_budget_without_a_reload(
    browser: WebDriver, services: Services, tenant: TenantKey
) -> None:
    # Two items, one done: the batch runs until its budget of 0.074 is spent.
    batch_id = batch_row(tenant, 1, total=2, completed_at=None, credit_budget=Decimal("0.074"))
    log_in(browser, services, tenant.key)
    browser.get(f"{services.api}/dashboard/batches/{batch_id}")
    card = browser.find_element(By.CSS_SELECTOR, f'[data-batch="{batch_id}"]')

    def shown(field: str) -> str:
        return card.find_element(By.CSS_SELECTOR, f'[data-field="{field}"]').text

    assert (shown("status"), shown("credits"), shown("credits_saved")) == ("running", "0", "0")
    # What workers write as one item is copied and another paid for, exact to the credit.
    with session_scope() as session:
        session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(credits_used=Decimal("0.074"), reused=1, credits_saved=Decimal("0.037"))
        )
    wait_until(lambda: shown("credits_saved") == "0.037", timeout=10)
    assert (shown("credits"), shown("reused")) == ("0.074", "1")
    assert (shown("status"), shown("waiting_reason")) == ("waiting", "— batch credit budget spent")
    screenshot(browser, "batch-credits")


def test_a_job_page_shows_attempts_errors_deliveries_and_a_retry_button(
    browser: WebDriver,
    services: Services,
    tenant: TenantKey,
    api: httpx.Client,
    simulator: httpx.Client,
    hooks: Receiver,
) -> None:
    api.post("/v1/webhooks/endpoints", json={"url": hooks.url}).raise_for_status()
    simulator.post("/admin/config", json={"fail_500_rate": 1.0}).raise_for_status()
    _, url = shop_image("dashboard/job.png")
    job_id = api.post("/v1/jobs", json={"prompt": "x", "subject_image": url}).json()["id"]
    wait_for(api, job_id, "failed")
    hooks.wait_for(1)
    simulator.post("/admin/config", json={"fail_500_rate": 0.0}).raise_for_status()
    log_in(browser, services, tenant.key)

    browser.get(f"{services.api}/dashboard/jobs/{job_id}")
    assert browser.find_element(By.ID, "job-status").text == "failed"
    error = browser.find_element(By.ID, "job-error").text
    assert "segmind_unavailable" in error and "Internal server error" in error
    params = browser.find_element(By.ID, "job-params").text
    assert "prompt x" in params and "light_source" in params and "output_format webp" in params
    attempts = browser.find_elements(By.CSS_SELECTOR, "#attempts tbody tr")
    assert len(attempts) == 3 and "500" in attempts[0].text
    deliveries = browser.find_element(By.ID, "deliveries").text
    assert "job.failed" in deliveries and hooks.url in deliveries
    screenshot(browser, "job")

    press(browser, "retry-job")
    assert browser.find_element(By.ID, "job-status").text != "failed"
    assert wait_for(api, job_id, "succeeded", "failed")["status"] == "succeeded"
    browser.get(f"{services.api}/dashboard/jobs/{job_id}")
    wait_until(lambda: all(w > 0 for w in images_loaded(browser, ".pair img")))

    browser.get(f"{services.api}/dashboard/jobs")
    [row] = browser.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")
    assert job_id in row.text and "succeeded" in row.text
    screenshot(browser, "jobs")


def test_an_operator_pauses_and_resumes_the_fleet_from_the_fleet_page(
    browser: WebDriver, services: Services, operator: TenantKey, simulator: httpx.Client
) -> None:
    log_in(browser, services, operator.key)
    browser.get(f"{services.api}/dashboard/throttle")
    assert browser.find_element(By.ID, "fleet-state").text == "running"
    browser.find_element(By.ID, "reason").send_keys("catalog freeze")
    press(browser, "pause")

    assert browser.find_element(By.ID, "fleet-state").text == "paused"
    assert "catalog freeze" in browser.page_source
    assert (
        httpx.get(f"{services.api}/v1/throttle", headers={"x-api-key": operator.key}).json()[
            "state"
        ]
        == "paused"
    )
    screenshot(browser, "fleet-paused")
    press(browser, "resume")
    assert browser.find_element(By.ID, "fleet-state").text == "running"
    assert (
        httpx.get(f"{services.api}/v1/throttle", headers={"x-api-key": operator.key}).json()[
            "state"
        ]
        == "running"
    )


def test_a_tenant_sees_only_its_own_data(
    browser: WebDriver,
    services: Services,
    tenant: TenantKey,
    api: httpx.Client,
    make_tenant: Callable[[], TenantKey],
) -> None:
    mine = catalog_batch(api, 1)
    other = make_tenant()
    log_in(browser, services, other.key)

    assert mine not in browser.page_source
    browser.get(f"{services.api}/dashboard/batches/{mine}")
    assert browser.find_element(By.ID, "not-found").text == "Batch not found."
    assert browser.find_elements(By.ID, "pause") == []
    browser.get(f"{services.api}/dashboard/throttle")
    assert "Only operators" in browser.page_source


@pytest.mark.usefixtures("low_balance")
def test_the_fleet_page_shows_a_low_balance_in_red(
    browser: WebDriver, services: Services, tenant: TenantKey
) -> None:
    log_in(browser, services, tenant.key)
    browser.get(f"{services.api}/dashboard/throttle")

    warning = browser.find_element(By.ID, "low-balance")
    assert warning.is_displayed()
    assert "fell below 10 (RELIGHTQ_CREDIT_WARN_BELOW)" in warning.text
    assert warning.value_of_css_property("border-left-color") == "rgba(179, 38, 30, 1)"  # --bad
    assert browser.find_element(By.ID, "credits").text.startswith("9.963 ")
    screenshot(browser, "fleet-low-balance")
