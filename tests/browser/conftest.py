"""Fixtures of the browser tests: Debian's Chromium driven by Playwright (no browser
download: `executable_path` is /usr/bin/chromium, which .ci/run installs with apt),
against `stock run` as one process on a free port, with the real database and broker.

Every test leaves screenshots of the pages it saw in .artifacts/screenshots/ (not
committed; docs/dashboard.png is one of them, copied by hand).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from pydantic import SecretStr

from service.application.admin import StockAdmin
from service.entrypoints.process import StockProcess
from service.settings import Settings

CHROMIUM = os.environ.get("STOCK_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".artifacts" / "screenshots"

ADMIN = "admin-secret"
WRITER = "writer-secret"
READER = "reader-secret"
TOKENS = f"boss:{ADMIN}:admin,till:{WRITER}:write,viewer:{READER}:read"
#: Generous: something arriving later is a failure, sooner is not measured.
WAIT_MS = 30_000
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 (once per session, before any loop work)
        pytest.fail(
            f"no Chromium at {CHROMIUM}: `apt-get install chromium` (.ci/run does), "
            "or point STOCK_TEST_CHROMIUM at one"
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Running:
    process: StockProcess
    settings: Settings
    admin: StockAdmin

    @property
    def base(self) -> str:
        assert self.process.server is not None
        return f"http://127.0.0.1:{self.process.server.port}"


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start(engine: Any, kafka_settings: Settings) -> AsyncIterator[Start]:
    """Starts `stock run` (worker + API on a free port) with these settings changed; the
    catalogue: tee-s, tee-m (product tee) and mug, 10 of each."""
    running: list[StockProcess] = []

    async def starting(**changes: Any) -> Running:
        settings = kafka_settings.model_copy(
            update={
                "http_port": 0,
                "api_tokens": SecretStr(TOKENS),
                "stream_heartbeat_seconds": 0.5,
                **changes,
            }
        )
        admin = StockAdmin(engine, settings)
        for variant, product in (("tee-s", "tee"), ("tee-m", "tee"), ("mug", "mug")):
            await admin.restock(variant, 10, product_id=product)
        process = StockProcess(settings)
        running.append(process)
        await process.start()
        assert process.api is not None
        await asyncio.wait_for(process.api.feed.tailing.wait(), WAIT_MS / 1000)
        return Running(process, settings, admin)

    try:
        yield starting
    finally:
        for process in running:
            await process.stop()


Open = Callable[..., Awaitable[Page]]


@pytest.fixture
async def open_page(browser: Browser) -> AsyncIterator[Open]:
    """A page in a context of its own (its own localStorage), failing the test on any
    script error in it."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    async def opening(url: str, *, viewport: dict[str, int] = DESKTOP, **options: Any) -> Page:
        context = await browser.new_context(viewport=viewport, **options)  # type: ignore[arg-type]
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(url)
        return page

    try:
        yield opening
    finally:
        for context in contexts:
            await context.close()
    assert not errors, f"script errors in the page: {errors}"


async def paste_token(page: Page, token: str) -> None:
    """As a person does: paste it into the token field and press Enter."""
    await page.fill("#token-input", token)
    await page.press("#token-input", "Enter")
    await page.wait_for_function(
        "() => document.getElementById('who').textContent.startsWith('token ')"
    )
    await settled(page)


async def settled(page: Page) -> None:
    """Every fragment the page asked for has arrived and been swapped in (the page reads
    them all again when a token is pasted: acting before would race the new copy)."""
    await page.wait_for_function("() => (document.body.dataset.pending || '0') === '0'")


async def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def unlabelled_inputs(page: Page) -> list[str]:
    """Every visible form control without a label (accessibility: each has one)."""
    found: list[str] = await page.evaluate(
        """() => Array.from(document.querySelectorAll('input, select, textarea'))
              .filter((e) => e.type !== 'hidden')
              .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
              .map((e) => e.outerHTML)"""
    )
    return found
