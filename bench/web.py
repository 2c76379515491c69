"""How fast the web page opens a long stream: a store of N segments (default 10,000: 22 hours of
8 s chunks) with real JPEG thumbnails, served by `vidstorm serve` with a token, opened in headless
Chromium (Debian's, through Playwright) at the stream's timeline.

Figures: page_load_s (navigation -> the timeline drawn: every page of /segments fetched, 1000 a
page), thumbs_s (-> the visible thumbnails decoded), dom_segments (segment nodes in the DOM),
zoom_s (zoom out, then in: redrawn), jump_s (open the timeline at a moment near the end), and
the server's own time for one page of 1000 segments (api_page_s).

Last line: one JSON object with those keys.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOKEN = "bench-token"


def build_store(root: Path, n: int, per_file: int = 500) -> None:
    """n segments of one stream, written through Store in files of `per_file` rows (as after compaction)."""
    import av

    from pipeline.decode import jpeg_thumbnail
    from pipeline.store import Store
    from pipeline.types import Segment, Summary

    rng = np.random.default_rng(0)
    thumbs = []
    for k in range(16):  # a few distinct pictures, ~camera-like
        img = np.full((360, 640, 3), 40 + 10 * k, np.uint8)
        img[100:200, 40 * k : 40 * k + 120] = (200, 60, 60)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        thumbs.append(jpeg_thumbnail(av.VideoFrame.from_ndarray(img, format="rgb24"), 192))
    store = Store(root)
    words = ["a person walks past the door", "a truck backs into the dock", "an empty corridor",
             "two people talk near the gate", "a cyclist crosses the yard"]
    for start in range(0, n, per_file):
        rows = [Segment(stream_id="gate", chunk_seq=i, t_start=8.0 * i, t_end=8.0 * (i + 1),
                        caption=f"{words[i % 5]} ({i})", visual_embedding=np.zeros(8, np.float32),
                        text_embedding=rng.normal(size=384).astype(np.float32), n_frames=8,
                        config_fingerprint="bench", source="/nonexistent/gate.mp4", created_at=time.time(),
                        thumbnail=thumbs[i % 16])
                for i in range(start, min(n, start + per_file))]
        store.write_records(rows)
    windows = [Summary(stream_id="gate", level="window", seq=w, t_start=60.0 * w, t_end=60.0 * (w + 1),
                       text=f"minute {w}: people and vehicles", text_embedding=np.zeros(384, np.float32),
                       config_fingerprint="bench", created_at=time.time())
               for w in range(int(8 * n / 60))]
    store.write_records(windows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", type=int, default=10000)
    args = parser.parse_args()

    import httpx
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        t0 = time.perf_counter()
        build_store(data / "store", args.segments)
        print(f"store: {args.segments} segments in {time.perf_counter() - t0:.1f} s", flush=True)
        env = {**os.environ, "VIDSTORM_API_TOKEN": TOKEN}
        server = subprocess.Popen([sys.executable, "-m", "actors.cli", "serve", "--port", "0", "--data", str(data)],
                                  cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
        try:
            url = None
            for line in server.stderr:
                match = re.search(r"http://(\S+?):(\d+)", line)
                if match:
                    url = f"http://{match.group(1)}:{match.group(2)}"
                    break
            assert url, "vidstorm serve printed no address"
            auth = {"Authorization": f"Bearer {TOKEN}"}
            while True:
                try:
                    if httpx.get(url + "/streams", headers=auth, timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            start = time.perf_counter()
            page = httpx.get(url + "/segments", params={"stream": "gate", "limit": 1000}, headers=auth, timeout=60)
            api_page_s = time.perf_counter() - start
            assert page.status_code == 200 and len(page.json()["items"]) == 1000

            chromium = shutil.which("chromium") or "/usr/bin/chromium"
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                context = browser.new_context(viewport={"width": 1400, "height": 900})
                context.add_init_script(f"sessionStorage.setItem('vidstorm-token', {TOKEN!r})")
                tab = context.new_page()
                errors = []
                tab.on("pageerror", lambda e: errors.append(str(e)))
                start = time.perf_counter()
                tab.goto(f"{url}/#/stream/gate")
                tab.get_by_test_id("segment").first.wait_for()
                page_load_s = time.perf_counter() - start
                tab.wait_for_function(
                    "() => { const imgs = [...document.querySelectorAll('[data-testid=segment-thumbnail]')]"
                    ".filter(i => { const r = i.getBoundingClientRect(); return r.right > 0 && r.left < innerWidth; });"
                    " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }")
                thumbs_s = time.perf_counter() - start
                dom_segments = tab.get_by_test_id("segment").count()
                start = time.perf_counter()
                for _ in range(3):
                    tab.get_by_test_id("zoom-out").click()
                for _ in range(3):
                    tab.get_by_test_id("zoom-in").click()
                tab.get_by_test_id("segment").first.wait_for()
                zoom_s = time.perf_counter() - start
                late = 8.0 * (args.segments - 20)
                start = time.perf_counter()
                tab.goto(f"{url}/#/stream/gate?t={late:.0f}")
                tab.reload()
                tab.locator(f"[data-testid=segment][data-seq='{args.segments - 20}'].selected").wait_for()
                jump_s = time.perf_counter() - start
                browser.close()
            assert not errors, errors
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    result = {"segments": args.segments, "api_page_s": round(api_page_s, 3), "page_load_s": round(page_load_s, 3),
              "thumbs_s": round(thumbs_s, 3), "dom_segments": dom_segments, "zoom_s": round(zoom_s, 3),
              "jump_s": round(jump_s, 3)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
