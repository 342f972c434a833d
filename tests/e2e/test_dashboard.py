"""The depot dashboard in a real headless browser (Debian's chromium, driven by Playwright).

The gateway runs in this test's event loop; simulated chargers talk to it over loopback. Set
``FLIPTURN_UPDATE_SCREENSHOT=1`` to write the screenshot shown in the README (docs/dashboard.png).
``.ci/run`` installs chromium and sets ``FLIPTURN_REQUIRE_BROWSER=1``, so there the tests cannot skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from gateway.config import PortMapping
from gateway.store.engine import OutboxRow
from tests.support import Charger, FakeCloud, charger, make_settings, running_gateway

if TYPE_CHECKING:
    from playwright.async_api import Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HAVE_CHROMIUM = Path(CHROMIUM).exists()
LIVE_S = 2.0  # the dashboard's promise: a change shows within this
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
T0 = "2027-01-15T08:00:00Z"


def ago(seconds: float) -> str:
    """An OCPP timestamp ``seconds`` before now (negative: in the future)."""
    return datetime.fromtimestamp(time.time() - seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not HAVE_CHROMIUM:
        if os.environ.get("FLIPTURN_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing (apt-get install chromium)")
        pytest.skip(f"needs {CHROMIUM} (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        instance = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            await instance.close()


async def new_page(browser: Any, width: int = 1280, height: int = 900) -> Page:
    context = await browser.new_context(viewport={"width": width, "height": height})
    page: Page = await context.new_page()
    return page


def expect(locator: Any, timeout_s: float = 5.0) -> Any:
    from playwright.async_api import expect as pw_expect

    return pw_expect(locator), {"timeout": timeout_s * 1000}


async def status(cp: Charger, connector: int, value: str, error: str = "NoError") -> None:
    await cp.call(
        "StatusNotification", {"connectorId": connector, "errorCode": error, "status": value}
    )


@contextlib.asynccontextmanager
async def answering(cp: Charger, answers: dict[str, dict[str, Any]]) -> AsyncIterator[list[str]]:
    """Answer the CALLs the gateway sends to ``cp`` (reservations) while the block runs."""
    seen: list[str] = []

    async def loop() -> None:
        while True:
            incoming = await cp.calls.get()
            seen.append(incoming[2])
            await cp.answer(incoming, answers[incoming[2]])

    task = asyncio.create_task(loop())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_renders_chargers_and_updates_live_when_a_connector_changes(
    tmp_path: Any, cloud: FakeCloud, browser: Any
) -> None:
    settings = make_settings(tmp_path, upstream={"url": cloud.url})
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CP-1") as cp:
        await cp.call(
            "BootNotification",
            {"chargePointVendor": "Alfen", "chargePointModel": "Eve", "firmwareVersion": "6.1"},
        )
        await status(cp, 1, "Available")
        await status(cp, 2, "Available")
        page = await new_page(browser)
        await page.goto(f"http://127.0.0.1:{gw.api_port}/")
        card = page.get_by_role("listitem", name="charger CP-1")
        check, opts = expect(card)
        await check.to_contain_text("Alfen · Eve · fw 6.1", **opts)
        await check.to_contain_text("cloud link up", **opts)
        first = card.locator(".conn").nth(0)
        check, opts = expect(first)
        await check.to_contain_text("Available", **opts)
        await check.to_have_class("conn s-available", **opts)
        # Layout shifts from here on (the page has rendered): none is the promise.
        await page.evaluate(
            "window.__shift = 0; new PerformanceObserver((l) => { for (const e of l.getEntries())"
            " { window.__shift += e.value; window.__shifted = (window.__shifted || []).concat(e.sources.map((x) => x.node && (x.node.id || x.node.className || x.node.nodeName))); } }).observe({type: 'layout-shift', buffered: false});"
        )

        await status(cp, 1, "Faulted", "GroundFailure")  # a real frame over loopback
        changed_at = time.monotonic()
        check, opts = expect(first, LIVE_S)
        await check.to_contain_text("Faulted", **opts)
        await check.to_have_class("conn s-faulted", **opts)
        await check.to_contain_text("GroundFailure", **opts)
        await check.to_have_attribute("title", "Connector 1: Faulted (GroundFailure)", **opts)
        assert time.monotonic() - changed_at < LIVE_S
        check, opts = expect(page.locator("#announce"))
        await check.to_have_text("CP-1 connector 1: Faulted (GroundFailure)", **opts)

        tx = (
            await cp.call(
                "StartTransaction",
                {"connectorId": 2, "idTag": "04A1B2", "meterStart": 1000, "timestamp": T0},
            )
        )[2]["transactionId"]
        await cp.call(
            "MeterValues",
            {
                "connectorId": 2,
                "transactionId": tx,
                "meterValue": [
                    {
                        "timestamp": T0,
                        "sampledValue": [
                            {"value": "13500"},
                            {"value": "7.4", "measurand": "Power.Active.Import", "unit": "kW"},
                        ],
                    }
                ],
            },
        )
        row = page.locator("#sessions tbody tr")
        check, opts = expect(row, LIVE_S)
        await check.to_contain_text("04A1B2", **opts)
        await check.to_contain_text("12.50 kWh", **opts)
        await check.to_contain_text("7.4 kW", **opts)
        assert await page.evaluate("[window.__shift, window.__shifted]") == [0, None]

        await cp.close()  # the charger goes away: the card says so, and keeps what it knew
        check, opts = expect(card, LIVE_S)
        await check.to_contain_text("disconnected", **opts)
        await check.to_contain_text("Faulted", **opts)


async def test_reservations_are_created_and_cancelled_from_the_page(
    tmp_path: Any, browser: Any
) -> None:
    settings = make_settings(tmp_path).model_copy(
        update={"ports": [PortMapping(id=101, charger="CP-1", connector=1)]}
    )
    async with (
        running_gateway(settings) as gw,
        charger(gw.charger_port, "CP-1") as cp,
        answering(
            cp, {"ReserveNow": {"status": "Accepted"}, "CancelReservation": {"status": "Accepted"}}
        ) as seen,
    ):
        await status(cp, 1, "Available")
        page = await new_page(browser)
        await page.goto(f"http://127.0.0.1:{gw.api_port}/")
        await page.get_by_label("Port").select_option("101")
        await page.get_by_label("Tag").fill("FLEET-7")
        await page.get_by_label("Minutes").fill("45")
        await page.get_by_label("Reservation id").fill("4711")
        await page.get_by_role("button", name="Reserve").click()
        check, opts = expect(page.locator("#reserve-result"))
        await check.to_have_text("Reservation 4711: Accepted", **opts)
        row = page.locator("#reservations tbody tr:not(.empty-row)")
        check, opts = expect(row)
        await check.to_contain_text("FLEET-7", **opts)
        await check.to_contain_text("4711", **opts)

        await page.get_by_role("button", name="Cancel reservation 4711").click()
        check, opts = expect(page.locator("#reserve-result"))
        await check.to_have_text("Cancel reservation 4711: Accepted", **opts)
        check, opts = expect(row)
        await check.to_have_count(0, **opts)
        assert seen == ["ReserveNow", "CancelReservation"]


def dead_row(seq: int, action: str) -> OutboxRow:
    return OutboxRow(
        seq, "CP-1", "1.6", f"m{seq}", action, '{"connectorId":1}', time.time(), None, 3, 0.0
    )


async def test_dead_letters_are_requeued_and_dropped_from_the_page(
    tmp_path: Any, browser: Any
) -> None:
    async with running_gateway(make_settings(tmp_path)) as gw:
        assert gw.store is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}") as client:
            probe = await client.delete("/api/outbox/dead/999999")
        if probe.json() == {"error": "Not Found"}:  # no such route: the generic 404
            pytest.skip("this build has no dead-letter requeue/drop API yet")
        for seq, action in ((1, "StatusNotification"), (2, "MeterValues")):
            await gw.store.dead_letter(
                dead_row(seq, action),
                code="PropertyConstraintViolation",
                description="refused",
                now=time.time(),
            )
        page = await new_page(browser)
        await page.goto(f"http://127.0.0.1:{gw.api_port}/")
        rows = page.locator("#dead tbody tr:not(.empty-row)")
        check, opts = expect(rows)
        await check.to_have_count(2, **opts)

        await page.get_by_role("button", name="Requeue dead letter 1").click()
        check, opts = expect(page.locator("#dead-result"))
        await check.to_have_text("StatusNotification 1: Requeued", **opts)
        drop = page.get_by_role("button", name="Drop dead letter 2")
        await drop.click()
        await page.get_by_role("button", name="Confirm dropping dead letter 2").click()
        await check.to_have_text("MeterValues 2: Deleted", **opts)
        check, opts = expect(rows)
        await check.to_have_count(0, **opts)
        assert await gw.store.dead_letter_count() == 0


async def test_token_login_once_and_nothing_shown_without_it(tmp_path: Any, browser: Any) -> None:
    settings = make_settings(tmp_path, api={"token": "depot-token-123"})
    async with running_gateway(settings) as gw, charger(gw.charger_port, "CP-SECRET") as cp:
        await status(cp, 1, "Charging")
        page = await new_page(browser)
        url = f"http://127.0.0.1:{gw.api_port}/"
        await page.goto(url)
        check, opts = expect(page.get_by_label("API token"))
        await check.to_be_visible(**opts)
        check, opts = expect(page.locator("#app"))
        await check.to_be_hidden(**opts)
        assert "CP-SECRET" not in await page.content()

        await page.get_by_label("API token").fill("wrong")
        await page.get_by_role("button", name="Sign in").click()
        check, opts = expect(page.locator("#login-error"))
        await check.to_have_text("That token is not right.", **opts)
        assert "CP-SECRET" not in await page.content()

        await page.get_by_label("API token").fill("depot-token-123")
        await page.get_by_role("button", name="Sign in").click()
        check, opts = expect(page.get_by_role("listitem", name="charger CP-SECRET"))
        await check.to_contain_text("Charging", **opts)
        (cookie,) = await page.context.cookies()
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        assert cookie["value"] != "depot-token-123"
        assert await page.evaluate("document.cookie") == ""  # out of the page script's reach

        await page.reload()  # asked once: the cookie keeps the page signed in
        check, opts = expect(page.get_by_role("listitem", name="charger CP-SECRET"))
        await check.to_be_visible(**opts)
        check, opts = expect(page.get_by_label("API token"))
        await check.to_be_hidden(**opts)

        await page.get_by_role("button", name="Log out").click()
        check, opts = expect(page.get_by_label("API token"))
        await check.to_be_visible(**opts)
        assert "CP-SECRET" not in await page.content()


async def test_sign_in_after_ten_wrong_tokens_says_when_to_try_again(
    tmp_path: Any, browser: Any
) -> None:
    settings = make_settings(tmp_path, api={"token": "depot-token-123"})
    async with running_gateway(settings) as gw:
        page = await new_page(browser)
        await page.goto(f"http://127.0.0.1:{gw.api_port}/")
        token, error = page.get_by_label("API token"), page.locator("#login-error")
        for n in range(10):
            await token.fill(f"guess-{n}")
            await page.get_by_role("button", name="Sign in").click()
            check, opts = expect(error)
            await check.to_have_text("That token is not right.", **opts)
            await page.evaluate("document.getElementById('login-error').textContent = ''")
        await token.fill("depot-token-123")  # the right one: refused while throttled
        await page.get_by_role("button", name="Sign in").click()
        check, opts = expect(error)
        await check.to_have_text(
            re.compile(r"^Too many failed sign-ins from this address; try again in (59|60) s\.$"),
            **opts,
        )
        check, opts = expect(page.locator("#app"))
        await check.to_be_hidden(**opts)


async def test_screenshot_of_a_busy_depot(tmp_path: Any, cloud: FakeCloud, browser: Any) -> None:
    """A depot with a few chargers in different states, on a control-room-sized screen and a phone."""
    ports = [
        PortMapping(id=101, charger="DEPOT-A1", connector=1),
        PortMapping(id=102, charger="DEPOT-A1", connector=2),
    ]
    settings = make_settings(tmp_path, upstream={"url": cloud.url}).model_copy(
        update={"ports": ports}
    )
    async with (
        running_gateway(settings) as gw,
        charger(gw.charger_port, "DEPOT-A1") as a1,
        charger(gw.charger_port, "DEPOT-A2") as a2,
        charger(gw.charger_port, "DEPOT-B1", "2.0.1") as b1,
        answering(a1, {"ReserveNow": {"status": "Accepted"}}),
    ):
        await a1.call(
            "BootNotification",
            {
                "chargePointVendor": "Alfen",
                "chargePointModel": "Eve Double",
                "firmwareVersion": "6.4.0",
            },
        )
        await status(a1, 1, "Charging")
        await status(a1, 2, "Available")
        tx = (
            await a1.call(
                "StartTransaction",
                {
                    "connectorId": 1,
                    "idTag": "04A1B2C3",
                    "meterStart": 20000,
                    "timestamp": ago(47 * 60),
                },
            )
        )[2]["transactionId"]
        await a1.call(
            "MeterValues",
            {
                "connectorId": 1,
                "transactionId": tx,
                "meterValue": [
                    {
                        "timestamp": ago(47 * 60),
                        "sampledValue": [
                            {"value": "38650"},
                            {"value": "10980", "measurand": "Power.Active.Import", "unit": "W"},
                        ],
                    }
                ],
            },
        )
        await a2.call(
            "BootNotification",
            {
                "chargePointVendor": "Kempower",
                "chargePointModel": "S-Series",
                "firmwareVersion": "2.1",
            },
        )
        await status(a2, 1, "Faulted", "GroundFailure")
        await status(a2, 2, "Preparing")
        await b1.call(
            "BootNotification",
            {
                "chargingStation": {
                    "vendorName": "ABB",
                    "model": "Terra AC",
                    "firmwareVersion": "1.8.2",
                },
                "reason": "PowerUp",
            },
        )
        for evse in (1, 2):
            await b1.call(
                "StatusNotification",
                {
                    "timestamp": ago(12 * 60),
                    "connectorStatus": "Occupied" if evse == 1 else "Available",
                    "evseId": evse,
                    "connectorId": 1,
                },
            )
        await b1.call(
            "TransactionEvent",
            {
                "eventType": "Started",
                "timestamp": ago(12 * 60),
                "triggerReason": "Authorized",
                "seqNo": 0,
                "transactionInfo": {"transactionId": "b1-7f3a"},
                "evse": {"id": 1, "connectorId": 1},
                "idToken": {"idToken": "FLEET-0042", "type": "ISO14443"},
                "meterValue": [{"timestamp": ago(12 * 60), "sampledValue": [{"value": 1200.0}]}],
            },
        )
        await b1.call(
            "TransactionEvent",
            {
                "eventType": "Updated",
                "timestamp": ago(12 * 60),
                "triggerReason": "MeterValuePeriodic",
                "seqNo": 1,
                "transactionInfo": {"transactionId": "b1-7f3a"},
                "meterValue": [
                    {
                        "timestamp": ago(12 * 60),
                        "sampledValue": [
                            {"value": 9650.0},
                            {"value": 7200.0, "measurand": "Power.Active.Import"},
                        ],
                    }
                ],
            },
        )
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}") as client:
            reserved = await client.post(
                "/api/ocpp/reservations",
                json={
                    "portId": 102,
                    "expiryDate": ago(-40 * 60),
                    "idTag": "FLEET-0100",
                    "reservationId": 311,
                },
            )
        assert reserved.json() == {"status": "Accepted"}

        assert gw.store is not None
        await gw.store.dead_letter(
            OutboxRow(
                9, "DEPOT-A2", "1.6", "4021", "MeterValues", "{}", time.time() - 3600, None, 8, 0.0
            ),
            code="PropertyConstraintViolation",
            description="transactionId unknown",
            now=time.time() - 600,
        )
        page = await new_page(browser, 1600, 1000)
        await page.goto(f"http://127.0.0.1:{gw.api_port}/")
        check, opts = expect(page.locator("#sessions tbody tr:not(.empty-row)"))
        await check.to_have_count(2, **opts)
        check, opts = expect(page.locator("#reservations tbody tr:not(.empty-row)"))
        await check.to_have_count(1, **opts)
        check, opts = expect(page.get_by_role("listitem", name="charger DEPOT-A2"))
        await check.to_contain_text("GroundFailure", **opts)
        wide = tmp_path / "dashboard.png"
        await page.screenshot(path=str(wide), full_page=True)
        phone = await new_page(browser, 390, 844)
        await phone.goto(f"http://127.0.0.1:{gw.api_port}/")
        check, opts = expect(phone.get_by_role("listitem", name="charger DEPOT-B1"))
        await check.to_contain_text("Occupied", **opts)
        # Nothing wider than the phone's screen but the tables, which scroll inside their box.
        assert await phone.evaluate("document.documentElement.scrollWidth") <= 390
        await phone.screenshot(path=str(tmp_path / "dashboard-phone.png"), full_page=True)
    assert wide.stat().st_size > 10_000
    if os.environ.get("FLIPTURN_UPDATE_SCREENSHOT"):
        shutil.copyfile(wide, SCREENSHOT)
        shutil.copyfile(
            tmp_path / "dashboard-phone.png", SCREENSHOT.with_name("dashboard-phone.png")
        )
