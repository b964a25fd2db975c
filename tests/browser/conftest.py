"""A headless Chromium (Debian's ``chromium``, which scripts/test installs) driven by Playwright."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright


def chromium_path() -> str:
    found = os.environ.get("TOCSIN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError(
            "the browser tests need Debian's chromium: apt-get install chromium (scripts/test does)"
        )
    return found


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=chromium_path(), headless=True, args=["--disable-gpu"])
        try:
            yield b
        finally:
            await b.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where the screenshots go: the test's tmp dir, or TOCSIN_SCREENSHOTS when set (to refresh docs/)."""
    where = Path(os.environ.get("TOCSIN_SCREENSHOTS") or tmp_path / "screenshots")
    where.mkdir(parents=True, exist_ok=True)
    return where
