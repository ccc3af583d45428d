"""Debian's headless Chromium through Selenium: the report's browser test and its README screenshot.

Selenium and Chromium are dev tools (`bash scripts/setup.sh --dev`); nothing here downloads a browser.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

# what this machine needs: no sandbox as root, no background connections to a closed network
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1200,900")


def missing_tools() -> list[str]:
    """What headless Chromium needs and this machine lacks."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    return missing


def headless_chromium(profile_parent: str | Path | None = None) -> Any:
    """A Selenium driver of Debian's chromium that records the browser console; its profile folder
    goes under `profile_parent` (a temporary folder the caller removes)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (*FLAGS, f"--user-data-dir={tempfile.mkdtemp(dir=profile_parent, prefix='chromium-')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


def screenshot(page: str | Path, out: str | Path, sections: tuple[str, ...] = ("funnel", "eval"),
               width: int = 1200, scale_to: int = 800) -> Path:
    """A PNG of the page header and the given sections of `page` (a local report file), stacked,
    shrunk to `scale_to` pixels wide and quantised to 256 colours: small enough to commit."""
    import io

    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="winnow-shot-") as profiles:
        parts = _section_pngs(headless_chromium(profiles), page, sections, width)
    images = [Image.open(io.BytesIO(p)).convert("RGB") for p in parts]
    sheet = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), "white")
    y = 0
    for img in images:
        sheet.paste(img, (0, y))
        y += img.height
    if sheet.width > scale_to:
        sheet = sheet.resize((scale_to, round(sheet.height * scale_to / sheet.width)), Image.LANCZOS)
    sheet.quantize(256).save(out, optimize=True)
    return Path(out)


def _section_pngs(driver: Any, page: str | Path, sections: tuple[str, ...], width: int) -> list[bytes]:
    from selenium.webdriver.common.by import By

    try:
        driver.get(Path(page).resolve().as_uri())
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(width, min(height, 16_000))
        parts = [driver.find_element(By.TAG_NAME, "header").screenshot_as_png]
        return parts + [driver.find_element(By.ID, sid).screenshot_as_png for sid in sections]
    finally:
        driver.quit()


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m winnow.report.browser REPORT.html OUT.png  (header, funnel and eval sections)")
    print(screenshot(sys.argv[1], sys.argv[2]))
