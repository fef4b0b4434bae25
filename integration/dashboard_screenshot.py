"""The screenshot of the dashboard in docs/operations.md, made the way the browser test
makes its own: the native compose stack (``integration/compose_native.py``) under load
through both proxies, one backend slowed a third of the way in, then the page opened in
headless Chromium, which draws the history the agent kept meanwhile.

``python -m integration.dashboard_screenshot --out docs/img/dashboard.png`` (about five
minutes; loopback only, the load bounded in requests and time).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.request
from pathlib import Path

from integration.browser import headless_chromium, wait_for_polls
from integration.compose_native import NativeStack

TOKEN = "screenshot-token"
RATE_RPS = 120.0
SLOW_PORT = 8083  # s3 on HAProxy, the third endpoint on Envoy


def _slow_down(stack: NativeStack, mean_ms: float) -> None:
    body = json.dumps({"service": {"mean_ms": mean_ms}}).encode()
    url = f"{stack.backend_url(SLOW_PORT)}/-/config"
    with urllib.request.urlopen(urllib.request.Request(url, body, method="PUT"), timeout=5):
        pass


def shoot(out: Path, minutes: float, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory(prefix="veloflux-shot-") as tmp:
        token = Path(tmp) / "api-token"
        token.write_text(TOKEN + "\n", encoding="utf-8")
        token.chmod(0o600)
        env = {"VELOFLUX_API__TOKEN_FILE": str(token)}
        with NativeStack(Path(tmp) / "stack", agent_env=env) as stack:
            seconds = minutes * 60
            stack.load_both(RATE_RPS, seconds + 30, int(RATE_RPS * (seconds + 30)))
            time.sleep(seconds / 3)
            _slow_down(stack, 80.0)
            time.sleep(seconds * 2 / 3)
            with headless_chromium() as browser:
                page = browser.new_page(viewport={"width": width, "height": height})
                page.goto(stack.agent_url + "/")
                wait_for_polls(page, 2)
                page.screenshot(path=str(out), full_page=False)
    _shrink(out)
    print(f"wrote {out} ({out.stat().st_size / 1000:.0f} kB)")


def _shrink(path: Path) -> None:
    """A page of flat colours loses nothing visible at 64 colours, and a third of its
    size: the checked-in copy stays small."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img/dashboard.png"))
    parser.add_argument("--minutes", type=float, default=4.0, help="the stack's run first")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1500)
    opts = parser.parse_args()
    shoot(opts.out, opts.minutes, opts.width, opts.height)


if __name__ == "__main__":
    main()
