"""A real headless Chromium driven over the DevTools protocol, for the report tests:
load a page, collect console errors and uncaught exceptions, inspect the DOM and
take a full-page screenshot. Needs Debian's `chromium` (`.ci/run` installs it)."""

from __future__ import annotations

import base64
import json
import os
import signal
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--no-first-run", "--no-default-browser-check",
    "--metrics-recording-only", "--disable-features=Translate,OptimizationHints,MediaRouter",
    "--remote-allow-origins=*",
)


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageCheck:
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    dom: dict[str, Any] = field(default_factory=dict)
    screenshot: bytes = b""


class _Cdp:
    def __init__(self, ws_url: str) -> None:
        import websocket  # websocket-client

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        my_id = self.next_id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        if any(e.get("method") == method for e in self.events):
            return
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            self.events.append(msg)
            if msg.get("method") == method:
                return
        raise TimeoutError(method)


def _devtools_port(proc: subprocess.Popen[bytes], profile: Path, timeout_s: float = 30) -> int:
    # Chromium writes the chosen port to DevToolsActivePort in the profile directory.
    deadline = time.monotonic() + timeout_s
    port_file = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        if port_file.exists():
            text = port_file.read_text().split()
            if text:
                return int(text[0])
        time.sleep(0.1)
    raise TimeoutError("chromium did not open its DevTools port")


def check_page(url: str, width: int = 1280) -> PageCheck:
    binary = chromium_path()
    assert binary, "no chromium"
    # Chromium's helper processes can still be writing the profile after the browser
    # exits: they are killed with its process group, and what they left is not an error.
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
            cdp.call("Page.navigate", url=url)
            cdp.wait_for("Page.loadEventFired")
            dom = cdp.call("Runtime.evaluate", returnByValue=True, expression="""({
                images: document.images.length,
                imagesRendered: Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length,
                svgImages: Array.from(document.images).filter(i => i.src.startsWith('data:image/svg+xml')).length,
                external: Array.from(document.querySelectorAll('[src],[href]')).map(e => e.getAttribute('src') || e.getAttribute('href'))
                    .filter(u => /^(https?:)?\\/\\//.test(u)).length,
                text: document.body.innerText,
                height: document.documentElement.scrollHeight,
                ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
            })""")["result"]["value"]
            cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=min(int(dom["height"]), 16000),
                     deviceScaleFactor=1, mobile=False)
            shot = base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"])
            errors = []
            for e in cdp.events:
                m, p = e.get("method"), e.get("params", {})
                if m == "Runtime.exceptionThrown":
                    errors.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:300])
                elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                    errors.append("console: " + json.dumps(p.get("args", []))[:300])
                elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                    errors.append("log: " + p["entry"].get("text", ""))
                elif m == "Network.loadingFailed":
                    errors.append("network: " + json.dumps(p)[:300])
            cdp.ws.close()
            return PageCheck(errors=errors, dom=dom, screenshot=shot)
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
                proc.wait()
