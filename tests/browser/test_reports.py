"""The reports page in Chromium: the latest weekly report's figures, tables and PNG
charts (fetched with the token, as every read), and a kind with no report yet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from service.application.reports import write_report
from tests.browser.conftest import READER, WRITER, Open, Start, paste_token, screenshot
from tests.e2e.helpers import send_events, wait_until
from tests.support.records import checkout, paid

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


async def test_the_weekly_report_with_its_charts(
    start: Start, open_page: Open, engine: Any, tmp_path: Path
) -> None:
    running = await start(api_reads_require_token=True, reports_dir=str(tmp_path))
    # A week so far: two sales through Kafka, a delivery and a write-off.
    await send_events(
        running.settings,
        [checkout("o-1", {"tee-s": 3}), paid("o-1"), checkout("o-2", {"mug": 9}), paid("o-2")],
    )
    async with httpx.AsyncClient(base_url=running.base, timeout=30) as http:
        auth = {"Authorization": f"Bearer {WRITER}"}

        async def sold() -> bool:
            answer = await http.get("/api/inventory/check/mug", headers=auth)
            return bool(answer.json()["availableQuantity"] == 1)

        await wait_until(sold)
        await http.post(
            "/api/inventory/restock",
            json={"updates": [{"variantId": "mug", "quantity": 5, "reason": "delivery"}]},
            headers=auth,
        )
    written = await write_report(engine, running.settings, "weekly")
    charts = written.files["charts"]
    assert charts, written.files.get("chartsSkipped")

    page = await open_page(running.base + "/dashboard/reports?kind=weekly")
    await paste_token(page, READER)
    await page.wait_for_selector("#report-period")
    assert written.report.period.label in (await page.text_content("#report-period") or "")
    images = page.locator("img.report-chart")
    assert await images.count() == len(charts)
    # Each chart is a PNG fetched with the token and shown: it has pixels.
    await page.wait_for_function(
        "() => Array.from(document.querySelectorAll('img.report-chart'))"
        ".every((image) => image.complete && image.naturalWidth > 0)"
    )
    assert "units sold" in (await page.text_content(".summary") or "")
    await screenshot(page, "reports-weekly")

    async with httpx.AsyncClient(base_url=running.base, timeout=30) as http:
        chart = f"/dashboard/data/reports/weekly/charts/{charts[0]}"
        assert (await http.get(chart)).status_code == 401
        answer = await http.get(chart, headers={"Authorization": f"Bearer {READER}"})
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "image/png"
        # Only the report's own files: nothing else of the directory, nothing outside.
        for name in ("report.md", "..%2F..%2Fetc%2Fpasswd", "nope.png"):
            refused = await http.get(
                f"/dashboard/data/reports/weekly/charts/{name}",
                headers={"Authorization": f"Bearer {READER}"},
            )
            assert refused.status_code == 404, name

    await page.click("nav.tabs a:has-text('Monthly')")
    await page.wait_for_selector("#no-report")
    assert "stock report monthly" in (await page.text_content("#no-report") or "")
