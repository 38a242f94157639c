"""The clinic portal in a real browser: Debian's Chromium, headless, driven by chromedriver through selenium.

A relay (uvicorn in a thread, the app ``btt-relay run`` serves) holds two clinics (tests/test_relay_api.World:
receipts, a settlement, a grant, a share table, a tariff) and capacity jobs (one done and paid, one disputed).
Clinic A signs in, walks every page, verifies a receipt's inclusion proof in the page (WebCrypto), switches to
Chinese and back, and signs out; clinic B sees nothing of A's device on any page or link, and A's device URLs
fetched with B's session are 404; the operator sees both clinics. Every page is saved as a screenshot under the
test's tmp dir and, with ``BTT_PORTAL_SCREENSHOTS=DIR``, into DIR as well.
"""

from __future__ import annotations

import os
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from cloud_relay.api import create_app
from cloud_relay.capacity.coordinator import Coordinator
from cloud_relay.capacity.market import Requirements
from cloud_relay.registry import Registry
from protocol.clock import now_ms
from protocol.keys import generate_key
from tests.conftest import free_port, wait_until
from tests.relay_helpers import offer_envelope, result_envelope, throwaway_db
from tests.test_relay_api import World

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.slow


@dataclass
class Relay:
    url: str
    world: World
    admin: str
    shots: list[Path]


def _capacity(world: World, coordinator: Coordinator) -> None:
    """A job of clinic A done and paid on A's device, and a spot-checked one disputed between A's and B's."""
    a, b = world.a, world.b
    now = now_ms()
    blob = coordinator.put_blob(b"a bundle of clinic A")
    coordinator.handle(a.identity.device_id, offer_envelope(a, "offer-a", now, ttl_ms=3_600_000))
    coordinator.submit("clinic-a", blob, blob, Requirements(2), False)
    [(_, job)] = coordinator.tick()
    coordinator.handle(a.identity.device_id, result_envelope(a, job, [[1, 2], [3, 4]], now))
    coordinator.handle(b.identity.device_id, offer_envelope(b, "offer-b", now, price=12, ttl_ms=3_600_000))
    coordinator.submit("clinic-a", blob, blob, Requirements(2), True)
    boxes = {a.identity.device_id: (a, [[1, 2], [3, 4]]), b.identity.device_id: (b, [[5_000_000, 2], [3, 4]])}
    for device, envelope in coordinator.tick():
        box, outputs = boxes[device]
        coordinator.handle(device, result_envelope(box, envelope, outputs, now))


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    with throwaway_db("sqlite", tmp_path) as db:
        world = World(db, tmp_path)
        _capacity(world, Coordinator(db, generate_key(), spot_check_fraction=0.0))
        admin = Registry(db).add_admin_token("operator")
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(db, world.ledger), host="127.0.0.1", port=port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            wait_until(lambda: server.started, 30, "the relay's HTTP server")
            yield Relay(f"http://127.0.0.1:{port}", world, admin, [])
        finally:
            server.should_exit = True
            thread.join(10)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    for tool in (CHROMIUM, CHROMEDRIVER):
        assert tool.exists(), f"{tool} is missing: install Debian's chromium and chromium-driver (scripts/setup)"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,800",
        "--lang=en-US",
    ):  # fmt: skip
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"intl.accept_languages": "en-US,en"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: webdriver.Chrome, relay: Relay, tmp_path: Path, name: str, width: int = 1280) -> None:
    """Save the whole page at ``width`` as ``name``.png (in tmp_path, and in $BTT_PORTAL_SCREENSHOTS)."""
    driver.set_window_size(width, 800)
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(width, min(max(800, height + 140), 4000))
    path = tmp_path / "screenshots" / f"{name}.png"
    path.parent.mkdir(exist_ok=True)
    assert driver.save_screenshot(str(path)), name
    driver.set_window_size(1280, 800)
    relay.shots.append(path)
    target = os.environ.get("BTT_PORTAL_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(target) / path.name)


def _sign_in(driver: webdriver.Chrome, relay: Relay, token: str) -> None:
    driver.get(relay.url + "/")
    field = driver.find_element(By.ID, "token")
    assert driver.find_element(By.CSS_SELECTOR, "label[for=token]").text
    field.send_keys(token)
    driver.find_element(By.ID, "sign-in").click()
    _wait(driver).until(lambda d: d.find_elements(By.ID, "sign-out"))


def _sign_out(driver: webdriver.Chrome) -> None:
    driver.find_element(By.ID, "sign-out").click()
    _wait(driver).until(lambda d: d.find_elements(By.ID, "token"))


def _links(driver: webdriver.Chrome) -> list[str]:
    return [str(a.get_attribute("href")) for a in driver.find_elements(By.TAG_NAME, "a")]


def _accessible(driver: webdriver.Chrome) -> None:
    """Every visible form control has a label, the page says its language, and nothing overflows sideways."""
    unlabeled = driver.execute_script(
        "return [...document.querySelectorAll('input:not([type=hidden]), select')]"
        ".filter(e => !e.labels.length && !e.getAttribute('aria-label')).map(e => e.outerHTML)"
    )
    assert unlabeled == []
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang")
    assert driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")


def _status(url: str, session: str) -> int:
    request = urllib.request.Request(url, headers={"Cookie": f"btt_session={session}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _wait(driver: webdriver.Chrome) -> WebDriverWait[webdriver.Chrome]:
    """Up to 10 s; an element that goes stale because the page is being replaced (a redirect after a form) counts as
    not there yet, like one not found."""
    return WebDriverWait(driver, 10, ignored_exceptions=(StaleElementReferenceException,))


def test_clinics_and_the_operator_walk_the_portal(relay: Relay, browser: webdriver.Chrome, tmp_path: Path) -> None:
    driver, world = browser, relay.world
    a, b = world.a.identity.device_id, world.b.identity.device_id

    # signed out: the sign-in page, with the note that no studies are held here
    driver.get(relay.url + "/")
    assert "Studies are not shown" in driver.find_element(By.ID, "studies-note").text
    _accessible(driver)
    _shot(driver, relay, tmp_path, "sign-in")
    driver.find_element(By.ID, "token").send_keys("btt_not-a-token")
    driver.find_element(By.ID, "sign-in").click()
    _wait(driver).until(lambda d: d.find_elements(By.ID, "sign-in-error"))
    assert "not known" in driver.find_element(By.ID, "sign-in-error").text

    # clinic A: devices, its device, money, capacity
    _sign_in(driver, relay, world.token_a)
    cookie: Any = driver.get_cookie("btt_session")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert [e.text for e in driver.find_elements(By.CSS_SELECTOR, "a.device-link")] == [a]
    assert b not in driver.page_source
    _accessible(driver)
    _shot(driver, relay, tmp_path, "devices")
    driver.find_element(By.LINK_TEXT, a).click()
    _wait(driver).until(lambda d: d.find_elements(By.ID, "usage-chart"))
    assert "Usage in Nov 2026" in driver.page_source
    assert len(driver.find_elements(By.CSS_SELECTOR, "#usage-chart rect")) == 2  # analysis and exposure
    driver.find_element(By.ID, "verify-3").click()
    verdict = driver.find_element(By.ID, "verdict-3")
    _wait(driver).until(lambda d: verdict.get_attribute("data-result"))
    assert verdict.get_attribute("data-result") == "holds"
    assert verdict.text == "holds"
    assert not driver.find_elements(By.ID, "verify-6")  # receipt 6 is not settled: nothing to verify yet
    tampered = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"fetch('/devices/{a}/receipts/3/proof.json').then(r => r.json()).then(doc => {{"
        "  doc.receipt.signed.units += 1; return window.bttVerifyProof(doc); }).then(done, e => done('error ' + e));"
    )
    assert tampered is False
    _accessible(driver)
    _shot(driver, relay, tmp_path, "device")
    _shot(driver, relay, tmp_path, "device-tablet", width=820)

    driver.find_element(By.LINK_TEXT, "Rights and money").click()
    _wait(driver).until(lambda d: d.find_elements(By.ID, "payouts"))
    assert driver.find_element(By.ID, "period").get_attribute("value") == "2026-11"
    rights = driver.find_element(By.ID, "rights").text
    assert "grant-1" in rights
    assert "CN¥10.00" in rights
    payouts = driver.find_element(By.ID, "payouts").text
    assert "owner-x" in payouts
    assert "CN¥32.90" in payouts
    csv_url = str(driver.find_element(By.ID, "export-csv").get_attribute("href"))
    assert _status(csv_url, cookie["value"]) == 200
    _accessible(driver)
    _shot(driver, relay, tmp_path, "money")
    Select(driver.find_element(By.ID, "period")).select_by_value("2026-10")  # htmx swaps the month in place
    driver.find_element(By.ID, "show-period").click()
    _wait(driver).until(
        lambda d: "Oct 2026" in d.execute_script("return document.getElementById('payouts-h').textContent")
    )
    assert driver.current_url.endswith("/money?period=2026-10")
    assert "No payouts" in driver.find_element(By.ID, "main").text
    driver.get(relay.url + "/money?period=2026-11")
    driver.find_element(By.LINK_TEXT, "owner-x").click()
    _wait(driver).until(lambda d: d.find_elements(By.ID, "earnings"))
    assert "70.00%" in driver.find_element(By.ID, "shares").text
    _shot(driver, relay, tmp_path, "owner")

    driver.find_element(By.LINK_TEXT, "Capacity").click()
    _wait(driver).until(lambda d: d.find_elements(By.ID, "jobs"))
    jobs = driver.find_element(By.ID, "jobs").text
    assert "done" in jobs
    assert "disputed" in jobs
    assert "disagree" in driver.find_element(By.ID, "disputes").text
    assert a in driver.find_element(By.ID, "compute-payouts").text
    assert "another clinic's device" in driver.find_element(By.ID, "offers").text
    assert b not in driver.page_source
    _accessible(driver)
    _shot(driver, relay, tmp_path, "capacity")

    # the language switch, kept in a cookie across pages, and back
    driver.find_element(By.ID, "lang-zh").click()
    _wait(driver).until(lambda d: d.find_element(By.TAG_NAME, "html").get_attribute("lang") == "zh-Hans-CN")
    assert "算力" in driver.find_element(By.TAG_NAME, "h1").text
    driver.get(relay.url + f"/devices/{a}")
    assert "2026年11月用量" in driver.page_source
    driver.get(relay.url + "/money?period=2026-11")
    assert "¥32.90" in driver.find_element(By.ID, "payouts").text
    _shot(driver, relay, tmp_path, "money-zh")
    driver.get(relay.url + "/")
    _shot(driver, relay, tmp_path, "devices-zh")
    driver.find_element(By.ID, "lang-en").click()
    _wait(driver).until(lambda d: d.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en")
    _sign_out(driver)
    driver.get(relay.url + "/money")
    assert driver.find_elements(By.ID, "token")  # signed out: back to the sign-in page

    # clinic B: nothing of A's device on any page or link; A's URLs with B's session are 404
    _sign_in(driver, relay, world.token_b)
    session_b = driver.get_cookie("btt_session")["value"]  # type: ignore[index]
    for path in ("/", f"/devices/{b}", "/money?period=2026-11", "/capacity"):
        driver.get(relay.url + path)
        assert a not in driver.page_source, path
        assert not [href for href in _links(driver) if a in href], path
    for path in (f"/devices/{a}", f"/devices/{a}?period=2026-11", f"/devices/{a}/receipts/3/proof.json"):
        assert _status(relay.url + path, session_b) == 404, path
    driver.get(relay.url + f"/devices/{a}")
    assert a not in driver.find_element(By.TAG_NAME, "main").text
    _shot(driver, relay, tmp_path, "not-found")
    _sign_out(driver)

    # the operator: both clinics
    _sign_in(driver, relay, relay.admin)
    listed = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "a.device-link")]
    assert sorted(listed) == sorted([a, b])
    _shot(driver, relay, tmp_path, "operator-devices")
    _sign_out(driver)

    assert all(p.stat().st_size > 10_000 for p in relay.shots)
