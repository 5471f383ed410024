"""``GET /`` in headless Chromium: the live page draws the loss curve from real data."""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

import pytest

pytest.importorskip("starlette", reason="needs the serve extra")
playwright_api = pytest.importorskip(
    "playwright.async_api", reason="needs the playwright package (test group)"
)

from asyncsess._serve_app import create_app  # noqa: E402

from ._serving import over_http  # noqa: E402
from .test_serve import STEP_INTERVAL, advances  # noqa: E402

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio

# Debian's chromium package (.ci/run installs it); Playwright's own browser
# downloads are not used (the network is closed).
CHROMIUM = os.environ.get("ASYNCSESS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Pixels of the loss canvas that the chart painted (not transparent).
PAINTED = """() => {
  const c = document.getElementById("loss-chart");
  const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
  return n;
}"""


def points(chart: str, more_than: int) -> str:
    return f"""() => Number(document.getElementById("{chart}").dataset.points)
                    > {more_than}"""


@pytest.mark.skipif(
    shutil.which(CHROMIUM) is None,
    reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)",
)
@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # Playwright and uvicorn
async def test_page_draws_the_live_loss_curve(tmp_path: Path) -> None:
    app = create_app(str(tmp_path), step_interval=STEP_INTERVAL)
    async with over_http(app) as client, playwright_api.async_playwright() as pw:
        await advances(client)
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = await browser.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on(
                "console",
                lambda msg: problems.append(msg.text) if msg.type == "error" else None,
            )
            await page.goto(str(client.base_url) + "/")
            await page.wait_for_function(points("loss-chart", 2), timeout=30_000)
            await page.wait_for_function(points("rate-chart", 2), timeout=30_000)
            assert await page.evaluate(PAINTED) > 200
            assert await page.text_content("#state") == "training"
            # It refreshes itself: the step shown keeps growing.
            shown = int(await page.text_content("#step") or "0")
            await page.wait_for_function(
                f"""() => Number(document.getElementById("step").textContent)
                          > {shown}""",
                timeout=30_000,
            )
            assert problems == []  # no script error, no CSP violation
        finally:
            await browser.close()
