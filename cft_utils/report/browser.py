"""Open reports in a real browser: headless Chromium driven over its DevTools protocol.

For each page it records the console errors (script errors, failed loads), every ``<img>``'s natural width and
the stderr blocks (``application/vnd.jupyter.stderr`` outputs: warnings, progress bars, tracebacks) of executed
notebooks. Used by tests/test_report_browser.py; by hand::

    python -m cft_utils.report.browser reports/sandbox      # checks index.html and every *.html there

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and ``websocket-client`` (the dev extra).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# Flags for a headless Chromium on a closed network (no background requests, no sandbox as root).
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--window-size=1280,900"]
INSTALL_HINT = "apt-get install -y chromium"

PAGE_PROBE = """(() => ({
  images: Array.from(document.images).map(i => ({src: i.currentSrc.slice(0, 120), complete: i.complete,
                                                  naturalWidth: i.naturalWidth})),
  stderr: document.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]').length,
  title: document.title,
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href')),
}))()"""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary (``$CHROMIUM`` first), or None."""
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@dataclass
class PageCheck:
    """What one page showed: console errors, images (src, complete, naturalWidth), stderr blocks, links."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    stderr_blocks: int = 0
    title: str = ""
    links: list[str] = field(default_factory=list)

    @property
    def broken_images(self) -> list[dict]:
        """Images that did not load (natural width 0)."""
        return [i for i in self.images if not i.get("naturalWidth")]

    def problems(self) -> list[str]:
        """Human-readable problems; empty when the page is clean."""
        out = [f"console error: {e}" for e in self.console_errors]
        out += [f"image did not load: {i['src']}" for i in self.broken_images]
        if self.stderr_blocks:
            out.append(f"{self.stderr_blocks} stderr block(s)")
        return out


class Chromium:
    """A headless Chromium with one page, driven over the DevTools protocol (a context manager)."""

    def __init__(self, binary: str | None = None, timeout: float = 30.0):
        import websocket  # websocket-client (dev extra)

        self.binary = binary or find_chromium()
        if not self.binary:
            raise FileNotFoundError(f"no Chromium found; install it with: {INSTALL_HINT}")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="cft-chromium-")
        self.proc = subprocess.Popen([self.binary, *FLAGS, f"--user-data-dir={self.profile}",
                                      "--remote-debugging-port=0", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = self._port()
        deadline = time.time() + timeout
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages or time.time() > deadline:
                break
            time.sleep(0.1)
        if not pages:
            self.close()
            raise RuntimeError("Chromium opened no page")
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=timeout,
                                              suppress_origin=True)
        self._id = 0
        self.events: list[dict] = []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def _port(self) -> int:
        f = Path(self.profile) / "DevToolsActivePort"
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Chromium exited with status {self.proc.returncode}")
            if f.exists():
                lines = f.read_text().split()
                if lines:
                    return int(lines[0])
            time.sleep(0.05)
        raise TimeoutError("Chromium did not open its DevTools port")

    def call(self, method: str, **params):
        """Send one DevTools command and return its result (events received meanwhile are kept)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def _wait_event(self, name: str) -> None:
        deadline = time.time() + self.timeout
        while not any(e.get("method") == name for e in self.events):
            if time.time() > deadline:
                raise TimeoutError(f"no {name} within {self.timeout} s")
            self.ws.settimeout(max(0.1, deadline - time.time()))
            self.events.append(json.loads(self.ws.recv()))
        self.ws.settimeout(self.timeout)

    def evaluate(self, expression: str, await_promise: bool = False):
        """The value of a JavaScript expression in the page."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=await_promise)
        if "exceptionDetails" in r:
            raise RuntimeError(f"script error: {r['exceptionDetails']}")
        return r["result"].get("value")

    def check(self, url: str, settle_ms: int = 300) -> PageCheck:
        """Load ``url``, wait for the load event (and ``settle_ms`` more), and report what the page showed."""
        self.events = []
        self.call("Page.navigate", url=url)
        self._wait_event("Page.loadEventFired")
        self.evaluate("Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))"
                      f".then(() => new Promise(r => setTimeout(r, {settle_ms})))", await_promise=True)
        found = self.evaluate(PAGE_PROBE)
        errors = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                errors.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                entry = p["entry"]
                errors.append(f"{entry.get('text', '')} {entry.get('url', '')}".strip())
        return PageCheck(url=url, console_errors=errors, images=found["images"], stderr_blocks=found["stderr"],
                         title=found["title"], links=found["links"])

    def close(self) -> None:
        """Quit Chromium and remove its profile folder."""
        ws = getattr(self, "ws", None)
        if ws is not None:
            try:
                ws.close()
            except Exception:  # closing must not mask the caller's error
                pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_site(report_dir: str | os.PathLike, browser: Chromium | None = None) -> dict[str, PageCheck]:
    """Check ``index.html`` and every other ``*.html`` in ``report_dir``; {file name: PageCheck}."""
    report_dir = Path(report_dir).resolve()
    pages = sorted(report_dir.glob("*.html"), key=lambda p: (p.name != "index.html", p.name))
    own = browser is None
    browser = browser or Chromium()
    try:
        return {p.name: browser.check(p.as_uri()) for p in pages}
    finally:
        if own:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    """Command line: check a report folder; print the problems; non-zero when there are any."""
    argv = sys.argv[1:] if argv is None else argv
    folder = Path(argv[0] if argv else "reports/sandbox")
    results = check_site(folder)
    bad = 0
    for name, page in results.items():
        problems = page.problems()
        bad += bool(problems)
        print(f"{name}: {len(page.images)} image(s), " + ("; ".join(problems) if problems else "clean"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
