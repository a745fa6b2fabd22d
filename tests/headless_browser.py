"""A small driver for headless Chromium over the Chrome DevTools Protocol (CDP), for UI tests.

Uses Debian's ``chromium`` (``.ci/run`` installs it) and aiohttp's WebSocket client (already a
Ray dependency), so no test tool downloads a browser. Flags: the set known to work on these
machines (no background networking: the sandboxed network refuses it).
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1600,1000", "--remote-debugging-port=0",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """``with Browser() as b: b.goto(url); b.wait_for_text([...]); b.screenshot(path)``."""

    def __init__(self, executable: str | None = None, timeout_s: float = 30.0):
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise RuntimeError("chromium is not installed (apt-get install -y chromium)")
        self.timeout_s = timeout_s
        self._profile = tempfile.mkdtemp(prefix="w2s-chromium-")
        self._proc: subprocess.Popen | None = None
        self._loop = asyncio.new_event_loop()
        self._session = None
        self._ws = None
        self._next_id = 0

    def __enter__(self) -> "Browser":
        self._proc = subprocess.Popen([self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}",
                                       "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = self._devtools_port()
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t.get("type") == "page")
        self._loop.run_until_complete(self._connect(page["webSocketDebuggerUrl"]))
        self.send("Page.enable")
        self.send("Runtime.enable")
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self._ws is not None:
                self._loop.run_until_complete(self._ws.close())
            if self._session is not None:
                self._loop.run_until_complete(self._session.close())
        finally:
            self._loop.close()
            if self._proc is not None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            shutil.rmtree(self._profile, ignore_errors=True)

    def _devtools_port(self) -> int:
        path = os.path.join(self._profile, "DevToolsActivePort")
        deadline = time.time() + self.timeout_s
        while time.time() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self._proc.returncode}")
            if os.path.exists(path):
                with open(path) as f:
                    first = f.readline().strip()
                if first.isdigit():
                    return int(first)
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    async def _connect(self, url: str) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(url, max_msg_size=0)

    async def _call(self, method: str, params: dict) -> dict:
        self._next_id += 1
        ident = self._next_id
        await self._ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self._ws.receive_json(), timeout=self.timeout_s)
            if msg.get("id") == ident:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def send(self, method: str, **params) -> dict:
        return self._loop.run_until_complete(self._call(method, params))

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, needles: list[str], timeout_s: float | None = None) -> str:
        """Poll the page's visible text until it holds every needle; returns the text."""
        deadline = time.time() + (timeout_s or self.timeout_s)
        text = ""
        while time.time() < deadline:
            text = self.text()
            if all(n in text for n in needles):
                return text
            time.sleep(0.25)
        missing = [n for n in needles if n not in text]
        raise TimeoutError(f"page never showed {missing}; it showed:\n{text[:3000]}")

    def wait_for(self, expression: str, timeout_s: float | None = None):
        """Poll a JavaScript expression until it is truthy (a click that needs its element rendered
        first, say); returns its value."""
        deadline = time.time() + (timeout_s or self.timeout_s)
        while time.time() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"never true: {expression[:200]}")

    def click_text(self, text: str, selector: str = "span, div, a, button") -> None:
        """Click the element that holds ``text`` as its own text, once it is rendered."""
        self.wait_for(f"""(() => {{
            const el = [...document.querySelectorAll({json.dumps(selector)})].find(e =>
                [...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim() === {json.dumps(text)}));
            if (!el) return false;
            el.click();
            return true;
        }})()""")

    def screenshot(self, path: str) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))


def render_html_file(path: str, screenshot: str, selector: str, timeout_s: float = 60) -> float:
    """Open a local HTML file, wait until ``selector`` has rendered (a plotly figure draws its SVG
    after its inlined script runs), save a screenshot and return the share of its pixels that are
    not the page background (0 for a blank page)."""
    import io

    from PIL import Image

    with Browser(timeout_s=timeout_s) as browser:
        browser.send("Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1, mobile=False)
        browser.goto("file://" + os.path.abspath(path))
        browser.wait_for(f"document.querySelectorAll({json.dumps(selector)}).length > 0")
        time.sleep(0.5)  # plotly finishes its transitions after the first SVG is in the page
        browser.screenshot(screenshot)
    with open(screenshot, "rb") as f:
        image = Image.open(io.BytesIO(f.read())).convert("L")
    pixels = list(image.getdata())
    background = max(set(pixels), key=pixels.count)
    return sum(1 for p in pixels if abs(p - background) > 16) / len(pixels)
