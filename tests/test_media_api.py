"""GET /clip, thumbnails and signed media URLs over a store written by a real --local ingest."""

import io
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient

from actors.server.app import create_app
from actors.server.media import ClipCache, MediaSigner
from pipeline.store import Store
from pipeline.types import Segment

from test_thumbnails import _ramp_clip

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "media-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def media_store(tmp_path_factory, tiny_overrides):
    folder = tmp_path_factory.mktemp("media")
    clip = _ramp_clip(folder / "ramp.mp4", seconds=24)  # a keyframe only at 0: cuts are re-encoded
    done = subprocess.run([sys.executable, "-m", "actors.cli", "ingest", str(clip), "--local", "--data",
                           str(folder / "data"), *tiny_overrides], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    live = Segment(stream_id="door", chunk_seq=0, t_start=0.0, t_end=8.0, caption="a door",
                   visual_embedding=np.zeros(4, np.float32), text_embedding=np.zeros(384, np.float32), n_frames=8,
                   config_fingerprint="x", source="rtsp://user:pw@10.0.0.5/live", created_at=time.time())
    Store(folder / "data" / "store").write_records([live])
    return folder


@pytest.fixture(scope="module")
def client(media_store, text_embedder):
    app = create_app(media_store / "data" / "store", TOKEN, text_embedder,
                     clip_cache=ClipCache(media_store / "cache", 64 << 20), clip_max_seconds=60)
    with TestClient(app) as c:
        yield c


def _frame_seconds(mp4: bytes) -> list[int]:
    """The second each frame of a ramp clip shows (its grey level / 10), in order."""
    with av.open(io.BytesIO(mp4)) as c:
        return [round(f.to_ndarray(format="rgb24").mean() / 10) for f in c.decode(video=0)]


def test_a_segments_clip_url_cuts_its_span(client):
    segments = client.get("/segments", params={"stream": "ramp"}, headers=AUTH).json()["items"]
    assert [s["chunk_seq"] for s in segments] == [0, 1, 2]
    second = segments[1]  # 8 s .. 16 s of a 10 fps clip whose frames show their second
    answer = client.get(second["clip_url"])  # signed: no header needed
    assert answer.status_code == 200 and answer.headers["content-type"] == "video/mp4"
    shown = _frame_seconds(answer.content)
    assert len(shown) == 80 and shown[0] == 8 and shown[-1] == 15, (len(shown), shown[:3], shown[-3:])
    again = client.get(second["clip_url"], headers={"Range": "bytes=0-99"})  # a browser's range request
    assert again.status_code == 206 and again.content == answer.content[:100]
    assert len(list((Path(client.app.state.query.root).parents[1] / "cache").glob("*.mp4"))) == 1


def test_clip_requests_that_cannot_be_served_say_why(client):
    get = lambda **p: client.get("/clip", params=p, headers=AUTH)  # noqa: E731
    assert get(stream="nope", since=0, until=5).status_code == 404
    live = get(stream="door", since=0, until=5)
    assert live.status_code == 400 and "live source" in live.json()["error"] and "pw" not in live.json()["error"]
    outside = get(stream="ramp", since=30, until=35)
    assert outside.status_code == 400 and "outside the source" in outside.json()["error"]
    long = get(stream="ramp", since=0, until=100)
    assert long.status_code == 400 and "longer than the limit of 60" in long.json()["error"]
    door = client.get("/segments", params={"stream": "door"}, headers=AUTH).json()["items"][0]
    assert door["clip_url"] is None and door["thumbnail_url"] is None


def test_thumbnails_are_served_with_an_etag_and_need_a_valid_signature(client):
    stream = client.get("/streams", headers=AUTH).json()["items"]
    ramp = next(s for s in stream if s["stream_id"] == "ramp")
    assert "/segments/ramp/2/thumbnail.jpg" in ramp["thumbnail_url"]  # the latest segment's
    url = client.get("/segments", params={"stream": "ramp"}, headers=AUTH).json()["items"][0]["thumbnail_url"]
    answer = client.get(url)
    assert answer.status_code == 200 and answer.content[:2] == b"\xff\xd8"
    assert answer.headers["cache-control"].startswith("private")
    assert client.get(url, headers={"If-None-Match": answer.headers["etag"]}).status_code == 304
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    unsigned = client.get(parts.path)
    assert unsigned.status_code == 401 and "exp and sig" in unsigned.json()["error"]
    assert client.get(parts.path, headers=AUTH).status_code == 200  # or the bearer header
    other = parts.path.replace("/0/", "/1/")  # another segment with this one's signature
    assert client.get(f"{other}?{parts.query}").status_code == 401
    stale = MediaSigner(TOKEN, ttl_s=60).url(parts.path, now=time.time() - 3600)
    assert "expired" in client.get(stale).json()["error"]
    forged = MediaSigner("another-token").url(parts.path)
    assert client.get(forged).status_code == 401
    longer = urlencode({**query, "exp": str(int(query["exp"]) + 10**6)})
    assert client.get(f"{parts.path}?{longer}").status_code == 401
    assert client.get("/segments/ramp/7/thumbnail.jpg", headers=AUTH).status_code == 404


def test_a_signed_url_checks_against_the_decoded_path_the_server_sees():
    signer = MediaSigner(TOKEN)
    url = signer.url("/segments/my%20cam/3/thumbnail.jpg")  # a stream id a URL must escape
    parts = urlsplit(url)
    decoded = "/segments/my cam/3/thumbnail.jpg"
    assert signer.check(decoded, parse_qsl(parts.query)) is None
    assert signer.check("/segments/my cam/4/thumbnail.jpg", parse_qsl(parts.query)) is not None
    assert MediaSigner(None).url("/clip", {"stream": "a b"}) == "/clip?stream=a+b"  # no token: plain URLs
