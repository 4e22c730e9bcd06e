"""A real headless Chromium (Debian's `chromium` and `chromium-driver`) driven
by Selenium, for the return pages. Selenium is synchronous: tests call it
through `asyncio.to_thread`, so that the server under test keeps serving on
the test's event loop while the browser waits."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("BROWSER_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("BROWSER_CHROMEDRIVER", "/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "docs" / "screenshots"


def _missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).exists() or shutil.which(path)):
            return f"{path} not found (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session, phone-sized (the pages must read on a phone)."""
    why = _missing()
    if why:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the browser is required in CI: {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=412,860", "--force-device-scale-factor=1", "--no-first-run"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The browser, seen from async tests."""

    def __init__(self, driver: Any, shots: Path) -> None:
        self.driver = driver
        self.shots = shots

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    async def open(self, url: str) -> None:
        await self.run(self.driver.get, url)

    async def text(self, css: str = "body") -> str:
        from selenium.webdriver.common.by import By

        return str(await self.run(lambda: self.driver.find_element(By.CSS_SELECTOR, css).text))

    async def attr(self, css: str, name: str) -> str:
        from selenium.webdriver.common.by import By

        return str(await self.run(lambda: self.driver.find_element(By.CSS_SELECTOR, css).get_attribute(name)) or "")

    async def click(self, css: str) -> None:
        from selenium.webdriver.common.by import By

        await self.run(lambda: self.driver.find_element(By.CSS_SELECTOR, css).click())

    async def wait_state(self, state: str, within: float = 20.0) -> None:
        """Until the page itself (its polling) shows `state`."""
        deadline = time.monotonic() + within
        seen = ""
        while time.monotonic() < deadline:
            seen = await self.attr("#payment", "data-state")
            if seen == state:
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"the page stayed {seen!r}, expected {state!r}")

    async def wait_url(self, ok: Callable[[str], bool], within: float = 20.0) -> str:
        deadline = time.monotonic() + within
        while True:
            url = str(await self.run(lambda: self.driver.current_url))
            if ok(url) or time.monotonic() > deadline:
                return url
            await asyncio.sleep(0.2)

    async def screenshot(self, name: str) -> Path:
        """Into the test's folder; with UPDATE_SCREENSHOTS=1 also into docs/screenshots."""
        path = self.shots / f"{name}.png"
        await self.run(self.driver.save_screenshot, str(path))
        assert path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("UPDATE_SCREENSHOTS") == "1":
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, SCREENSHOTS / path.name)
        return path


@pytest.fixture
def page(browser: Any, tmp_path: Path) -> Page:
    browser.delete_all_cookies()
    return Page(browser, tmp_path)
