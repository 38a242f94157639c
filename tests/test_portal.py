"""The clinic portal without a browser (FastAPI's TestClient): session cookies, CSRF, expiry, sign-out, isolation,
the operator's view, languages and formatting. The real-browser walk is tests/test_portal_browser.py."""

from __future__ import annotations

import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloud_relay.cli import main
from cloud_relay.ledger import period_bounds
from cloud_relay.portal import PortalConfig, mount_portal, on_chain
from cloud_relay.portal.formatting import Formatter
from cloud_relay.portal.i18n import LOCALES, catalogue, negotiate
from cloud_relay.registry import Registry
from cloud_relay.storage import Database
from tests.conftest import free_port, wait_until
from tests.relay_helpers import throwaway_db
from tests.test_relay_api import BACKEND_PARAMS, World
from tests.test_relay_cli import BTT_RELAY


@pytest.fixture(params=BACKEND_PARAMS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with throwaway_db(request.param, tmp_path) as database:
        yield database


@pytest.fixture
def world(db: Database, tmp_path: Path) -> World:
    return World(db, tmp_path)


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match is not None, html[:500]
    return match[1]


def sign_in(client: TestClient, token: str) -> str:
    """Sign ``client`` in with ``token``; returns the session's CSRF token."""
    csrf = _csrf(client.get("/").text)
    response = client.post("/sign-in", data={"token": token, "csrf": csrf}, follow_redirects=False)
    assert response.status_code == 303, response.text
    return _csrf(client.get("/").text)


def test_sign_in_exchanges_the_token_for_an_http_only_same_site_cookie(world: World) -> None:
    client = world.client
    page = client.get("/")
    assert page.status_code == 200
    assert 'action="/sign-in"' in page.text
    assert "Studies are not shown" in page.text
    csrf = _csrf(page.text)
    response = client.post("/sign-in", data={"token": world.token_a, "csrf": csrf}, follow_redirects=False)
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("btt_session=")
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Secure" not in cookie  # plain HTTP
    assert world.token_a not in cookie
    home = client.get("/")
    assert world.a.identity.device_id in home.text
    assert world.b.identity.device_id not in home.text
    assert home.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in home.headers["content-security-policy"]
    # over TLS the cookie is Secure
    tls = TestClient(client.app, base_url="https://testserver")
    csrf = _csrf(tls.get("/").text)
    response = tls.post("/sign-in", data={"token": world.token_a, "csrf": csrf}, follow_redirects=False)
    assert "Secure" in response.headers["set-cookie"]


def test_wrong_tokens_and_missing_csrf_are_refused(world: World) -> None:
    client = world.client
    csrf = _csrf(client.get("/").text)
    refused = client.post("/sign-in", data={"token": "btt_nope", "csrf": csrf})
    assert refused.status_code == 401
    assert "not known" in refused.text
    assert client.post("/sign-in", data={"token": world.token_a}).status_code == 403
    assert client.post("/sign-in", data={"token": world.token_a, "csrf": "forged"}).status_code == 403
    session_csrf = sign_in(client, world.token_a)
    assert session_csrf != csrf
    assert client.post("/sign-out", data={"csrf": "forged"}).status_code == 403
    assert client.post("/language", data={"lang": "zh-CN"}).status_code == 403
    assert client.get("/").status_code == 200  # still signed in
    # the htmx header carries the token as well
    response = client.post("/language", data={"lang": "zh-CN"}, headers={"X-CSRF-Token": session_csrf})
    assert response.status_code == 200
    assert 'lang="zh-Hans-CN"' in response.text


def test_sessions_expire_and_sign_out_ends_them(world: World, db: Database) -> None:
    now = [1_790_000_000_000]
    app = FastAPI()
    mount_portal(app, db, world.ledger, PortalConfig(session_ttl_s=60), clock=lambda: now[0])
    client = TestClient(app)
    sign_in(client, world.token_a)
    assert client.get("/money").status_code == 200
    now[0] += 61_000
    expired = client.get("/money", follow_redirects=False)
    assert (expired.status_code, expired.headers["location"]) == (303, "/")
    assert 'action="/sign-in"' in client.get("/").text
    csrf = sign_in(client, world.token_a)
    out = client.post("/sign-out", data={"csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303
    assert 'btt_session=""' in out.headers["set-cookie"]
    assert client.get("/capacity", follow_redirects=False).status_code == 303
    assert client.post("/sign-out", data={"csrf": csrf}).status_code == 401


def test_a_clinic_never_sees_another_clinics_device(world: World) -> None:
    client = world.client
    sign_in(client, world.token_b)
    a = world.a.identity.device_id
    for path in (f"/devices/{a}", f"/devices/{a}/receipts/1/proof.json", f"/devices/{a}?period=2026-11"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "clinic-a" not in response.text
    for path in ("/", "/money?period=2026-11", "/capacity", "/money/export?period=2026-11&format=json"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert a not in response.text, path
        assert "owner-x" not in response.text, path


def test_the_device_page_and_the_proof_are_the_apis(world: World) -> None:
    client = world.client
    sign_in(client, world.token_a)
    a = world.a.identity.device_id
    page = client.get(f"/devices/{a}")
    assert page.status_code == 200
    assert 'id="usage-chart"' in page.text
    assert "Nov 2026" in page.text
    assert page.text.count('class="verify"') == 5  # 5 settled receipts of 6
    api = world.get(f"/v1/devices/{a}/receipts/3/proof", world.token_a).json()
    assert client.get(f"/devices/{a}/receipts/3/proof.json").json() == api
    money = client.get("/money?period=2026-11").text
    assert "CN¥45.00" in money
    assert 'data-minor="4500"' in money
    assert "owner-x" in money
    assert "70.00%" in money
    assert (
        client.get("/money/export?period=2026-11").text
        == world.get("/v1/payouts", world.token_a, period="2026-11", format="csv").text
    )


def test_the_operator_sees_every_clinic_and_no_clinic_api(world: World, db: Database) -> None:
    admin = Registry(db).add_admin_token("ops")
    assert world.get("/v1/devices", admin).status_code == 401  # an operator token opens no clinic API route
    client = world.client
    sign_in(client, admin)
    home = client.get("/").text
    assert world.a.identity.device_id in home
    assert world.b.identity.device_id in home
    assert "Operator" in home
    assert client.get(f"/devices/{world.b.identity.device_id}").status_code == 200
    assert "clinic-a" in client.get("/money?period=2026-11").text


def test_the_on_chain_column_is_a_hook(world: World, db: Database) -> None:
    class Chain:
        def state(self, kind: str, ref: str) -> str | None:
            return f"chain:{kind}:{ref}"

    assert on_chain(None, "grant", "grant-1") is None
    app = FastAPI()
    mount_portal(app, db, world.ledger, chain=Chain())
    client = TestClient(app)
    sign_in(client, world.token_a)
    page = client.get("/money?period=2026-11").text
    assert "chain:grant:grant-1" in page
    assert "chain:payout:2026-11/owner-x/CNY" in page
    sign_in(world.client, world.token_a)
    assert 'id="chain-off"' in world.client.get("/money?period=2026-11").text


@pytest.mark.parametrize(
    ("header", "cookie", "expected"),
    [
        (None, None, "en"),
        ("zh-CN,zh;q=0.9,en;q=0.8", None, "zh-CN"),
        ("en-US,en;q=0.9,zh-CN;q=0.8", None, "en"),
        ("fr-FR, zh;q=0.5, en;q=0.4", None, "zh-CN"),
        ("zh-Hans-CN", None, "zh-CN"),
        ("zh-TW", None, "en"),
        ("de, *;q=0.1", None, "en"),
        ("zh-CN;q=0, en", None, "en"),
        (";;;,q=x,zh-CN;q=2", None, "en"),
        ("zh-CN", "en", "en"),
        ("en", "zh-CN", "zh-CN"),
        ("en", "klingon", "en"),
    ],
)
def test_locale_negotiation(header: str | None, cookie: str | None, expected: str) -> None:
    assert negotiate(header, cookie) == expected


def test_the_browser_language_is_the_default_and_the_switch_sticks(world: World) -> None:
    client = world.client
    assert "登录" in client.get("/", headers={"Accept-Language": "zh-CN,zh;q=0.9"}).text
    csrf = sign_in(client, world.token_a)
    switched = client.post("/language", data={"lang": "zh-CN", "csrf": csrf, "next": "/money"}, follow_redirects=False)
    assert (switched.status_code, switched.headers["location"]) == (303, "/money")
    assert "btt_lang=zh-CN" in switched.headers["set-cookie"]
    page = client.get("/money?period=2026-11", headers={"Accept-Language": "en"}).text
    assert "权益与费用" in page
    assert "¥45.00" in page
    assert "2026年11月" in page
    evil = client.post(
        "/language", data={"lang": "en", "csrf": csrf, "next": "//evil.example/"}, follow_redirects=False
    )
    assert evil.headers["location"] == "/"


def test_catalogues_hold_the_same_messages() -> None:
    en, zh = (set(catalogue(locale)) for locale in LOCALES)
    assert en == zh
    for locale in LOCALES:
        for message, text in catalogue(locale).items():
            assert text.strip(), (locale, message)
            assert set(re.findall(r"{(\w+)}", text)) == set(re.findall(r"{(\w+)}", catalogue("en")[message]))


def test_formatting_is_exact_and_per_locale() -> None:
    en, zh = Formatter("en"), Formatter("zh-CN")
    assert en.number(1234567) == "1,234,567"
    assert en.number(-1000) == "-1,000"
    assert en.number(0) == "0"
    assert en.money(123456, "CNY") == "CN¥1,234.56"
    assert zh.money(123456, "CNY") == "¥1,234.56"
    assert en.money(5, "USD") == "$0.05"
    assert zh.money(5, "USD") == "US$0.05"
    assert en.money(1500, "JPY") == "¥1,500"
    assert en.money(1_500_000, "USDC") == "1.500000\u00a0USDC"
    assert en.money(10**20 + 1, "CNY") == "CN¥1,000,000,000,000,000,000.01"  # no float anywhere
    assert en.money(42, "XYZ") == "42 XYZ minor units"
    assert zh.money(42, "XYZ") == "42 XYZ 最小单位"
    nov_2 = period_bounds("2026-11")[0] + 86_400_000 + 17 * 3_600_000 + 5 * 60_000
    assert en.date(nov_2) == "Nov 2, 2026"
    assert zh.date(nov_2) == "2026年11月2日"
    assert en.datetime(nov_2) == "Nov 2, 2026, 17:05 UTC"
    assert zh.datetime(nov_2) == "2026年11月2日 17:05 UTC"
    assert en.month("2026-11") == "Nov 2026"
    assert zh.month("2026-11") == "2026年11月"
    assert en.percent_bps(7000) == "70.00%"
    assert en.percent_bps(1) == "0.01%"
    assert en.micro(40) == "0.000040"
    assert en.duration_s(7200) == "2 h"
    assert zh.duration_s(30) == "30 秒"


def test_token_add_admin_and_run_serve_the_portal_at_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "relay.db")
    assert main(["clinic", "add", "clinic-a", "--name", "A", "--db", db]) == 0
    capsys.readouterr()
    assert main(["token", "add", "--admin", "--label", "ops", "--db", db]) == 0
    assert capsys.readouterr().out.startswith("btt_admin_")
    assert main(["token", "add", "--db", db]) == 2
    assert main(["token", "add", "clinic-a", "--admin", "--db", db]) == 2
    assert "not both" in capsys.readouterr().err
    port = free_port()
    proc = subprocess.Popen(
        [str(BTT_RELAY), "run", "--db", db, "--http-port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )

    def page(path: str) -> str | None:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                return str(response.read().decode("utf-8"))
        except (urllib.error.URLError, ConnectionError):
            return None

    try:
        assert 'action="/sign-in"' in (wait_until(lambda: page("/"), 30, "the portal's sign-in page") or "")
        assert "htmx" in (page("/static/vendor/htmx/htmx.min.js") or "")
        assert "rootFromProof" in (page("/static/verify.js") or "")
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/devices", timeout=2)
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
        if proc.stderr is not None:
            proc.stderr.close()
