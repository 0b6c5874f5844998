"""A stock count on a phone-sized screen (390x844), end to end in Chromium: open it for
a product, count line by line with the keyboard, see variances and tolerance, apply,
and approve the line out of tolerance with an admin token; then a blind count."""

from __future__ import annotations

import httpx
import pytest
from playwright.async_api import Page

from tests.browser.conftest import (
    ADMIN,
    PHONE,
    WRITER,
    Open,
    Start,
    paste_token,
    screenshot,
    unlabelled_inputs,
)

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


async def fits_the_screen(page: Page) -> bool:
    """Nothing wider than the phone: no sideways scrolling of the page."""
    width: int = await page.evaluate("document.documentElement.scrollWidth")
    return width <= PHONE["width"]


async def count_line(page: Page, variant: str, counted: int) -> None:
    line = page.locator(f"form.count-line[data-variant-id='{variant}']")
    await line.locator("input[name=counted]").fill(str(counted))
    await line.locator("input[name=counted]").press("Enter")
    await line.locator(".result[data-kind='ok']").wait_for()


async def test_a_count_on_a_phone_end_to_end(start: Start, open_page: Open) -> None:
    running = await start()
    page = await open_page(
        running.base + "/dashboard/counts", viewport=PHONE, is_mobile=True, has_touch=True
    )
    await paste_token(page, WRITER)
    assert await unlabelled_inputs(page) == []
    assert await fits_the_screen(page)

    # Open a count of every variant of product tee (tee-s and tee-m, 10 each).
    await page.fill("#count-product", "tee")
    await page.press("#count-product", "Enter")
    await page.wait_for_url("**/dashboard/counts/*")
    await page.wait_for_selector("#count-body[data-status='OPEN']")
    assert await page.locator("form.count-line").count() == 2
    assert await unlabelled_inputs(page) == []
    # Number pads on a phone.
    assert await page.get_attribute("form.count-line input[name=counted]", "inputmode") == (
        "numeric"
    )

    await count_line(page, "tee-s", 10)
    await count_line(page, "tee-m", 7)
    tee_s = page.locator("li.line[data-variant-id='tee-s']")
    tee_m = page.locator("li.line[data-variant-id='tee-m']")
    assert await tee_s.get_attribute("data-within") == "yes"
    assert await tee_m.get_attribute("data-within") == "no"
    assert await tee_m.locator("[data-field=expected]").text_content() == "10"
    assert await tee_m.locator("[data-field=variance]").text_content() == "-3"
    assert await tee_m.locator("[data-field=tolerance]").text_content() == "2"
    assert "OUT of tolerance" in (await tee_m.text_content() or "")
    assert await fits_the_screen(page)
    await screenshot(page, "count-phone")

    # A write token may apply, but not approve the line out of tolerance.
    await page.click("#count-apply")
    result = page.locator("#count-result")
    await page.locator("#count-approve").wait_for()
    assert "out of tolerance" in (await result.text_content() or "")
    await page.click("#count-approve")
    await page.wait_for_function(
        "() => document.getElementById('count-result').textContent.includes('forbidden')"
    )

    # An admin's token: approve and apply.
    await paste_token(page, ADMIN)
    await page.wait_for_selector("#count-body[data-status='OPEN']")
    await page.click("#count-apply")
    await page.locator("#count-approve").wait_for()
    await page.locator("#count-approve").press("Enter")  # a button works with the keyboard
    await page.wait_for_selector("#count-body[data-status='APPLIED']")
    assert "approved by api:boss" in (await page.locator("#count-body").text_content() or "")
    assert await fits_the_screen(page)
    await screenshot(page, "count-phone-applied")
    async with httpx.AsyncClient(base_url=running.base, timeout=30) as http:
        product = (await http.get("/api/inventory/product/tee")).json()
    assert {v["variantId"]: v["onHand"] for v in product["variants"]} == {
        "tee-m": 7,
        "tee-s": 10,
    }

    # A blind count of a list of variants: the expected figure stays hidden.
    await page.goto(running.base + "/dashboard/counts")
    await page.fill("#count-variants", "mug")
    await page.focus("#count-blind")
    await page.keyboard.press("Space")
    assert await page.is_checked("#count-blind")
    await page.click("#open-count-form button[type=submit]")
    await page.wait_for_selector("#count-body[data-blind='true']")
    await count_line(page, "mug", 9)
    mug = page.locator("li.line[data-variant-id='mug']")
    assert await mug.locator("[data-field=expected]").text_content() == "hidden"
    assert await mug.locator("[data-field=variance]").text_content() == "\u2013"  # a dash: unknown
