"""The overview in Chromium: live from the WebSocket, and reads refused without a token
when reads require one."""

from __future__ import annotations

import httpx
import pytest

from tests.browser.conftest import (
    READER,
    WRITER,
    Open,
    Start,
    paste_token,
    screenshot,
    unlabelled_inputs,
)
from tests.e2e.helpers import send_events
from tests.support.records import checkout

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


async def test_a_kafka_checkout_taking_a_variant_below_its_threshold_shows_live(
    start: Start, open_page: Open
) -> None:
    running = await start(api_reads_require_token=True)
    page = await open_page(running.base + "/dashboard")
    await paste_token(page, READER)  # reading is all the overview needs
    await page.wait_for_selector("#attention-title")
    await page.wait_for_selector("#live[data-state='on']")
    assert await page.locator("tr[data-variant-id='tee-s']").count() == 0
    assert await unlabelled_inputs(page) == []
    # Anything that reloads the page would forget this.
    await page.evaluate("window.notReloaded = true")

    # 10 on hand, threshold 5 (the default): a checkout of 7 leaves 3 available.
    await send_events(running.settings, [checkout("o-live", {"tee-s": 7})])

    row = page.locator("tr[data-variant-id='tee-s']")
    await row.wait_for()
    await page.wait_for_function(
        "() => document.querySelector(\"tr[data-variant-id='tee-s'] [data-field='available']\")"
        ".textContent === '3'"
    )
    assert await row.locator("[data-field='reserved']").text_content() == "7"
    assert "low" in (await row.text_content() or "")
    assert await page.evaluate("window.notReloaded") is True
    # The row links to the variant's page.
    link = row.locator("a")
    assert await link.get_attribute("href") == "/dashboard/variants/tee-s"

    # A write-off of all 10 mugs through the API: out of stock, and an anomaly
    # (large_adjustment: at least STOCK_ANOMALY_MIN_UNITS), both shown live.
    async with httpx.AsyncClient(base_url=running.base, timeout=30) as http:
        answer = await http.put(
            "/api/inventory/adjust",
            json={"updates": [{"variantId": "mug", "quantity": 0, "reason": "breakage"}]},
            headers={"Authorization": f"Bearer {WRITER}"},
        )
        assert answer.status_code == 200, answer.text
    anomaly = page.locator("#anomalies tbody tr", has_text="large_adjustment")
    await anomaly.wait_for()
    assert "mug" in (await anomaly.text_content() or "")
    mug = page.locator("tr[data-variant-id='mug']")
    await mug.wait_for()
    assert "out of stock" in (await mug.text_content() or "")
    assert await page.evaluate("window.notReloaded") is True
    await screenshot(page, "overview")

    # The row's link, with the read token kept: the page reads, its forms say they need
    # a write token and cannot be sent.
    await page.click("tr[data-variant-id='tee-s'] a")
    await page.wait_for_selector("#policy-form .needs")
    for form in ("#restock-form", "#adjust-form", "#policy-form"):
        assert await page.is_disabled(f"{form} button[type=submit]"), form
        note = await page.text_content(f"{form} .needs") or ""
        assert note == "Needs a write token (this one is read).", form


async def test_reads_without_a_token_are_refused_when_reads_require_one(
    start: Start, open_page: Open
) -> None:
    running = await start(api_reads_require_token=True)
    page = await open_page(running.base + "/dashboard")
    notice = page.locator("#notice")
    await notice.wait_for()
    assert "401" in (await notice.text_content() or "")
    assert "Paste a token" in (await notice.text_content() or "")
    # The public shell holds no stock data.
    html = await page.content()
    assert "tee-s" not in html and "mug" not in html
    await screenshot(page, "refused-without-token")

    async with httpx.AsyncClient(base_url=running.base, timeout=30) as http:
        for path in (
            "/dashboard/fragments/overview",
            "/dashboard/fragments/variants/tee-s/levels",
            "/dashboard/fragments/variants/tee-s/audit",
            "/dashboard/fragments/counts",
            "/dashboard/fragments/reports/weekly",
            "/dashboard/data/variants/tee-s/levels",
            "/dashboard/data/whoami",
        ):
            refused = await http.get(path)
            assert refused.status_code == 401, path
            assert refused.json()["code"] == "unauthorized"
            wrong = await http.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401, path
            allowed = await http.get(path, headers={"Authorization": f"Bearer {READER}"})
            assert allowed.status_code == 200, (path, allowed.text)
        # The pages are the same shell for everyone, and say who may frame them: no one.
        shell = await http.get("/dashboard/variants/tee-s")
        assert shell.status_code == 200
        assert "frame-ancestors 'none'" in shell.headers["content-security-policy"]

    # With a token the same page shows the data, without a reload.
    await paste_token(page, WRITER)
    await page.wait_for_selector("#attention-title")
    assert await notice.is_hidden()
