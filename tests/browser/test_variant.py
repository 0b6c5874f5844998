"""The variant page in Chromium: levels, the audit trail (paged, with actors, escaped),
the chart, the policy form, and restock/adjust with `expectedVersion`."""

from __future__ import annotations

import httpx
import pytest

from tests.browser.conftest import (
    WRITER,
    Open,
    Start,
    paste_token,
    screenshot,
    unlabelled_inputs,
)

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

AUTH = {"Authorization": f"Bearer {WRITER}"}
#: A reason that would run, and draw, if it were put into the page as HTML.
HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"><b>bold</b>'


async def test_a_stale_adjust_shows_the_conflict_and_the_new_figure(
    start: Start, open_page: Open
) -> None:
    running = await start()
    page = await open_page(running.base + "/dashboard/variants/tee-s")
    await paste_token(page, WRITER)
    await page.wait_for_selector("#level[data-version='1']")
    await page.wait_for_selector("#live[data-state='on']")

    # The user starts on the adjust form at version 1 (on hand 10)...
    await page.fill("#adjust-quantity", "4")
    await page.fill("#adjust-reason", "recount")
    # ...while someone else restocks 5: the page shows it live, the form stays at 1.
    async with httpx.AsyncClient(base_url=running.base, timeout=30) as http:
        answer = await http.post(
            "/api/inventory/restock",
            json={"updates": [{"variantId": "tee-s", "quantity": 5, "reason": "delivery"}]},
            headers=AUTH,
        )
        assert answer.status_code == 200
    await page.wait_for_function(
        "() => document.querySelector('#level [data-field=on_hand]').textContent === '15'"
    )
    assert await page.input_value("#adjust-form [name=expectedVersion]") == "1"

    await page.press("#adjust-reason", "Enter")  # the keyboard sends the form
    result = page.locator("#adjust-form .result[data-kind='conflict']")
    await result.wait_for()
    text = await result.text_content() or ""
    assert "Someone changed this" in text and "nothing was applied" in text
    assert "on hand 15" in text and "version 2" in text
    await screenshot(page, "variant-conflict")
    async with httpx.AsyncClient(base_url=running.base, timeout=30) as http:
        level = (await http.get("/api/inventory/check/tee-s")).json()
    assert (level["availableQuantity"], level["version"]) == (15, 2)

    # Sent again, now knowingly on version 2: applied.
    await page.click("#adjust-form button[type=submit]")
    await page.locator("#adjust-form .result[data-kind='ok']").wait_for()
    await page.wait_for_function(
        "() => document.querySelector('#level [data-field=on_hand]').textContent === '4'"
    )


async def test_the_variant_page_shows_the_trail_the_chart_and_the_policy(
    start: Start, open_page: Open
) -> None:
    running = await start()
    async with httpx.AsyncClient(base_url=running.base, timeout=30) as http:
        answer = await http.post(
            "/api/inventory/restock",
            json={"updates": [{"variantId": "mug", "quantity": 2, "reason": HOSTILE}]},
            headers=AUTH,
        )
        assert answer.status_code == 200
        for n in range(24):  # 26 changes in all: two pages of 20
            answer = await http.put(
                "/api/inventory/adjust",
                json={"updates": [{"variantId": "mug", "quantity": 20 + n, "reason": f"r{n}"}]},
                headers=AUTH,
            )
            assert answer.status_code == 200

    page = await open_page(running.base + "/dashboard/variants/mug")
    await paste_token(page, WRITER)
    await page.wait_for_selector("#audit-table")
    assert await unlabelled_inputs(page) == []

    # The audit trail: newest first, with actors; a page of 20, then older ones.
    first = page.locator("#audit-table tbody tr")
    assert await first.count() == 20
    assert await first.first.get_attribute("data-version") == "26"
    assert await first.first.locator(".actor").text_content() == "api:till"
    await page.click("#audit-older")
    await page.wait_for_selector("#audit-table tbody tr[data-version='1']")
    # The hostile reason is text: no script ran, no element was made from it.
    reason = page.locator("#audit-table tr[data-version='2'] .reason")
    assert await reason.text_content() == HOSTILE
    assert await reason.locator("script, img, b").count() == 0
    assert await page.evaluate("window.pwned") is None

    # The chart: on hand and available over the window as a step function (Chart.js):
    # each change of the window (the variant was made by the first), then the current
    # level held until now, the window's end; the level moves AT each change's time.
    await page.wait_for_function(
        "() => { const chart = window.Chart && Chart.getChart('level-chart');"
        " return chart && chart.data.datasets[0].data.length > 20; }"
    )
    chart = await page.evaluate(
        "(() => { const chart = Chart.getChart(document.getElementById('level-chart'));"
        " return { y: chart.data.datasets.map(d => d.data.map(p => p.y)),"
        " x: chart.data.datasets[0].data.map(p => p.x),"
        " stepped: chart.data.datasets.map(d => d.stepped),"
        " end: chart.options.scales.x.max }; })()"
    )
    points = chart["y"]
    assert points[0][:3] == [10, 12, 20]  # on hand: the catalogue's 10, +2, set to 20
    assert len(points[0]) == 26 + 1  # 26 changes, then the level now
    assert points[0][-2:] == [43, 43] and points[1][-2:] == [43, 43]
    assert chart["x"][-1] == chart["end"]  # held until the window's end
    assert chart["x"] == sorted(chart["x"])
    assert chart["stepped"] == ["before", "before"]
    note = page.locator("#chart-note")
    assert await note.text_content() == "26 changes in the window."
    await page.select_option("#chart-window", "1")
    await page.wait_for_function(
        "() => document.getElementById('chart-note').textContent !== ''"
    )
    assert await note.text_content() == "26 changes in the window."

    # The policy: set a reorder point with the form, and the levels show it in effect.
    await page.fill("#policy-reorderPoint", "50")
    await page.click("#policy-form button[type=submit]")
    await page.wait_for_function(
        "() => document.getElementById('policy-saved').textContent === 'Policy saved.'"
    )
    await page.wait_for_function(
        "() => document.querySelector('#levels').textContent.includes('50 (configured)')"
    )
    async with httpx.AsyncClient(base_url=running.base, timeout=30) as http:
        policy = (await http.get("/api/inventory/variants/mug/policy")).json()
    assert policy["reorderPoint"] == 50
    await page.click("#audit-title")  # back to the top of the trail for the picture
    await screenshot(page, "variant")
