"""A page in a real headless Chromium that a test can act on (the report tests' harness,
tests/support/browser.py, drives one load; the explorer needs clicks): evaluate
JavaScript, wait on something the page sets, take screenshots, and collect every
console error, exception, failed load and request the page made."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.browser import FLAGS, _Cdp, _devtools_port, chromium_path


class Page:
    def __init__(self, cdp: _Cdp, width: int) -> None:
        self.cdp, self.width = cdp, width

    def eval(self, expression: str) -> Any:
        out = self.cdp.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise AssertionError(f"{expression}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def wait_until(self, expression: str, timeout_s: float = 30) -> Any:
        """Until `expression` is truthy in the page (polled: the page's own state, not a sleep)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"never true: {expression}")

    def screenshot(self, path: Path) -> bytes:
        height = int(self.eval("document.documentElement.scrollHeight"))
        self.cdp.call("Emulation.setDeviceMetricsOverride", width=self.width, height=min(height, 16000),
                      deviceScaleFactor=1, mobile=False)
        png = base64.b64decode(self.cdp.call("Page.captureScreenshot", format="png")["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        return png

    def errors(self) -> list[str]:
        out = []
        for e in self.cdp.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:300])
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                out.append(f"console {p.get('type')}: " + json.dumps(p.get("args", []))[:300])
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
                out.append("log: " + p["entry"].get("text", ""))
            elif m == "Network.loadingFailed":
                out.append("network: " + json.dumps(p)[:300])
        return out

    def requests(self) -> list[str]:
        """Every URL the page asked for (documents, scripts, images, fetches)."""
        return [e["params"]["request"]["url"] for e in self.cdp.events if e.get("method") == "Network.requestWillBeSent"]


@contextmanager
def open_page(url: str, width: int = 1280) -> Iterator[Page]:
    binary = chromium_path()
    assert binary, "no chromium"
    with tempfile.TemporaryDirectory(prefix="llem-chromium-", ignore_cleanup_errors=True) as tmp:
        profile = Path(tmp)
        proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
             f"--window-size={width},1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HOME": tmp},
            start_new_session=True,
        )
        try:
            port = _devtools_port(proc, profile)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t["type"] == "page"]
            cdp = _Cdp(pages[0]["webSocketDebuggerUrl"])
            for domain in ("Page", "Runtime", "Log", "Network"):
                cdp.call(f"{domain}.enable")
            cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=1000, deviceScaleFactor=1, mobile=False)
            cdp.call("Page.navigate", url=url)
            cdp.wait_for("Page.loadEventFired")
            yield Page(cdp, width)
            cdp.ws.close()
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # renderers and other helpers
            except ProcessLookupError:
                pass
