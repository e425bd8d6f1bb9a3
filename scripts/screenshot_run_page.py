"""Screenshot the evertune run page and its tab in the Airflow UI with headless Chromium; assert on the text.

Against a running embedded stack (``python -m evertune_airflow.stack up``). The admin token comes from
``POST /auth/token`` with the stack's generated password and is handed to Chromium as the ``_token``
cookie the Airflow UI itself uses, through the DevTools protocol. Two PNGs are written:

* ``<out>/run_page.png``: the whole page itself (``/evertune/runs/<dag>/<run>``);
* ``<out>/ui_tab.png``: the DAG-run page of the Airflow UI with the "Evertune" tab open (an iframe at
  ``/dags/<dag>/runs/<run>/plugin/evertune``).

The text Chromium rendered (the page's ``innerText``, and the iframe's inside the UI) must contain every
``--expect`` string (default: the section title of the DAG's summary), else the script exits 1.

Usage (see docs/ui.md)::

    python scripts/screenshot_run_page.py --dag-id tune_model [--run-id RUN] [--out screenshots] \
        [--expect "Gate decision"]

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and the ``websockets`` package (installed
with Airflow's api-server).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from evertune_airflow.run_pages import run_page_path
from evertune_airflow.stack_client import AirflowClient
from evertune_airflow.stack_env import airflow_url

#: What a page of each DAG shows once it has a verdict (the default ``--expect``).
DEFAULT_EXPECT = {"tune_model": ["Gate decision", "Metrics against the champion"],
                  "refresh_knowledge_base": ["Counts", "Production tag"]}
#: ``innerText`` of the run page; inside the UI, of the tab's iframe (same origin, so readable).
PAGE_TEXT = "document.body ? document.body.innerText : ''"
IFRAME_TEXT = ("(() => { const f = document.querySelector('iframe'); "
               "try { return f && f.contentDocument && f.contentDocument.body ? f.contentDocument.body.innerText "
               ": ''; } catch (e) { return ''; } })()")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM Chromium's own process group (its renderers and helpers too), SIGKILL after 10 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


class DevTools:
    """A minimal Chrome DevTools Protocol session on one page target (synchronous ``websockets`` client)."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._next = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events arriving meanwhile are dropped)."""
        self._next += 1
        ident = self._next
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=60))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[DevTools]:
    """Start headless Chromium with remote debugging; yield a DevTools session on its first page."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="evertune-chromium-", ignore_cleanup_errors=True) as profile:
        process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                    page = next(t for t in targets if t.get("type") == "page")
                    break
                except (httpx.HTTPError, StopIteration, ValueError):
                    if time.monotonic() > deadline:
                        raise SystemExit("chromium did not open its debugging port") from None
                    time.sleep(0.3)
            from websockets.sync.client import connect

            with connect(page["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024) as ws:
                tools = DevTools(ws)
                tools.call("Page.enable")
                tools.call("Network.enable")
                yield tools
        finally:
            _stop_group(process)


def wait_for_text(tools: DevTools, expression: str, expected: list[str], timeout: float) -> str:
    """Poll ``expression`` until its text contains every ``expected`` string; return the last text."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = tools.evaluate(expression) or ""
        if all(item in text for item in expected):
            return text
        time.sleep(0.5)
    return text


def screenshot(tools: DevTools, url: str, path: Path, expression: str, expected: list[str],
               timeout: float, *, full_page: bool) -> tuple[str, list[str]]:
    """Open ``url``, wait for the expected text, save a PNG (the whole page or the viewport).

    Returns:
        The rendered text and the expected strings missing from it.
    """
    tools.call("Page.navigate", url=url)
    text = wait_for_text(tools, expression, expected, timeout)
    time.sleep(1.0)  # let late layout (the UI's panels) settle before the picture
    options: dict[str, Any] = {}
    if full_page:
        size = tools.call("Page.getLayoutMetrics")["cssContentSize"]
        options = {"captureBeyondViewport": True,
                   "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}
    shot = tools.call("Page.captureScreenshot", format="png", **options)
    path.write_bytes(base64.b64decode(shot["data"]))
    return text, [item for item in expected if item not in text]


def latest_run(client: AirflowClient, dag_id: str) -> str:
    """The run id of ``dag_id``'s most recent run."""
    runs = client.request("GET", f"/api/v2/dags/{dag_id}/dagRuns",
                          params={"order_by": "-run_after", "limit": 1})["dag_runs"]
    if not runs:
        raise SystemExit(f"{dag_id} has no runs yet")
    return runs[0]["dag_run_id"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dag-id", default="tune_model")
    parser.add_argument("--run-id", help="default: the DAG's most recent run")
    parser.add_argument("--out", type=Path, default=Path("screenshots"))
    parser.add_argument("--expect", action="append", help="text the rendered page must contain (repeatable)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each page's text")
    args = parser.parse_args(argv)
    base = airflow_url()
    with AirflowClient.connect() as client:
        token = client.token()
        run_id = args.run_id or latest_run(client, args.dag_id)
    expected = args.expect or DEFAULT_EXPECT.get(args.dag_id, ["Task states"])
    args.out.mkdir(parents=True, exist_ok=True)
    page_url = base + run_page_path(args.dag_id, run_id)
    tab_url = f"{base}/dags/{quote(args.dag_id, safe='')}/runs/{quote(run_id, safe='')}/plugin/evertune"
    failures = []
    with chromium() as tools:
        tools.call("Network.setCookie", name="_token", value=token, url=base + "/", path="/")
        for name, url, expression in (("run_page", page_url, PAGE_TEXT), ("ui_tab", tab_url, IFRAME_TEXT)):
            path = args.out / f"{name}.png"
            text, missing = screenshot(tools, url, path, expression, expected, args.timeout,
                                       full_page=name == "run_page")
            print(f"{name}: {url}\n  saved {path} ({path.stat().st_size} bytes); rendered text starts: "
                  f"{' '.join(text.split())[:160]!r}")
            if missing:
                failures.append(f"{name}: missing {missing}")
    for failure in failures:
        print("FAIL", failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
