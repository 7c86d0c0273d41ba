"""A headless Chromium (the distribution's package) driven over the Chrome DevTools Protocol with
websocket-client: open a page, hear its console, measure its SVG marks, take a screenshot. Nothing
is downloaded: the browser is whatever `chromium` the machine has."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import png  # type: ignore[import-untyped]
import pytest
import websocket

NAMES = ("chromium", "chromium-headless-shell", "chromium-browser")


def chromium_or_skip() -> str:
    """The browser's path; without one a developer's run skips, CI's fails (it installs one)."""
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    why = "no chromium on PATH (apt-get install chromium)"
    if os.environ.get("CI"):
        pytest.fail(why + "; CI must have it: .ci/run installs it")
    pytest.skip(why)


class Browser:
    def __init__(self, exe: str, profile: Path, width: int = 1200, height: int = 900) -> None:
        self.proc = subprocess.Popen(
            [
                exe,
                "--headless",
                "--no-sandbox",  # as root, as CI runs
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                f"--user-data-dir={profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        try:
            port = self._port(profile / "DevToolsActivePort")
            with httpx.Client(trust_env=False, timeout=10) as client:
                targets = client.get(f"http://127.0.0.1:{port}/json/list").json()
            page = next(t for t in targets if t["type"] == "page")
            self.ws = websocket.create_connection(
                page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True
            )
        except BaseException:
            self.close()
            raise

    def _port(self, path: Path, wait: float = 60) -> int:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().strip():
                return int(path.read_text().split()[0])
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            time.sleep(0.1)
        raise RuntimeError("chromium did not open its DevTools port")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a command; events that arrive meanwhile are kept."""
        n = next(self._ids)
        self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == n:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(event)
            self.events.append(json.loads(self.ws.recv()))

    def open(self, url: str) -> None:
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable")
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        answer = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in answer:
            raise RuntimeError(answer["exceptionDetails"])
        return answer["result"].get("value")

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and the browser's own error log entries."""
        out = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append(json.dumps(params.get("args")))
            elif method == "Runtime.exceptionThrown":
                out.append(json.dumps(params.get("exceptionDetails")))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                out.append(params["entry"].get("text", ""))
        return out

    def requests(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def picture(data: bytes) -> tuple[int, float]:
    """(distinct colours, share of pixels unlike the top-left one) of a PNG."""
    width, height, rows, _ = png.Reader(bytes=data).asRGBA8()
    colours: set[bytes] = set()
    background: bytes | None = None
    unlike = 0
    for row in rows:
        line = bytes(row)
        for x in range(0, width * 4, 4):
            pixel = line[x : x + 4]
            if background is None:
                background = pixel
            colours.add(pixel)
            unlike += pixel != background
    return len(colours), unlike / (width * height)
