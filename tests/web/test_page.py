"""The web page in headless Chromium against a real `vidstorm serve`: streams, thumbnails, search to timeline,
clip playback, the token prompt, and signed media URLs. Each test leaves a screenshot in its tmp_path."""

import time
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import pytest
from playwright.sync_api import expect

UNAUTHORIZED = r"status of 401"  # how Chromium logs a request answered 401

VISIBLE_IMAGES = """() => [...document.images].filter((img) => {
    const box = img.getBoundingClientRect();
    return box.width > 0 && box.height > 0 && box.right > 0 && box.bottom > 0
        && box.left < innerWidth && box.top < innerHeight;
})"""


def _segment(server, seq: int = 1) -> dict:
    (row,) = [r for r in server.get("/segments", stream="cam")["items"] if r["chunk_seq"] == seq]
    return row


def _wait_for_images(page) -> list[dict]:
    """Every image in the viewport, once each has finished loading (or failed)."""
    page.wait_for_function(f"({VISIBLE_IMAGES})().every((img) => img.complete)")
    return page.evaluate(f"({VISIBLE_IMAGES})().map((img) => ({{src: img.src, width: img.naturalWidth}}))")


def test_the_streams_page_lists_each_stream(tab, server, tmp_path):
    (stream,) = server.get("/streams")["items"]
    tab.open("")
    card = tab.page.locator("[data-testid=stream-card]")
    tab.wait_for(card)
    assert card.count() == 1
    assert card.get_attribute("data-stream") == "cam"
    text = card.inner_text()
    assert f"{stream['segments']} segments" in text and "0:00:00–0:00:24" in text
    if stream["summary"]:
        assert stream["summary"] in text
    assert tab.page.locator("[data-testid=error]").is_hidden()
    tab.page.screenshot(path=tmp_path / "streams.png")
    card.click()
    tab.wait_for(tab.page.locator("[data-testid=segment]"))
    assert tab.page.evaluate("location.hash") == "#/stream/cam"
    tab.assert_no_errors()


def test_thumbnails_load_on_the_streams_page_and_the_timeline(tab, server, tmp_path):
    assert server.get("/streams")["items"][0]["thumbnail_url"], "the API gives the stream no thumbnail"
    tab.open("")
    tab.wait_for(tab.page.locator("[data-testid=stream-card] img"))
    images = _wait_for_images(tab.page)
    assert len(images) == 1 and all(i["width"] > 0 for i in images), images
    tab.page.screenshot(path=tmp_path / "streams.png")

    tab.open("#/stream/cam")
    tab.wait_for(tab.page.locator("[data-testid=segment] img"))
    images = _wait_for_images(tab.page)
    assert len(images) == 3, images  # the whole 24 s stream fits the window at the first zoom
    assert all(i["width"] > 0 for i in images), images
    tab.page.screenshot(path=tmp_path / "timeline.png")
    tab.assert_no_errors()


@pytest.mark.parametrize("mode", ["keyword", "meaning"])
def test_a_search_finds_a_stored_caption_and_opens_it_on_the_timeline(tab, server, tmp_path, mode):
    segment = _segment(server, seq=1)
    assert any(c.isalnum() for c in segment["caption"]), segment
    tab.open("#/search")
    tab.page.get_by_test_id("search-input").fill(segment["caption"])
    tab.page.get_by_test_id("search-mode").select_option(mode)
    tab.page.get_by_test_id("search-submit").click()
    hit = tab.page.locator("[data-testid=search-result][data-stream=cam][data-seq='1'][data-level=chunk]")
    tab.wait_for(hit)
    assert segment["caption"] in hit.inner_text()
    tab.page.screenshot(path=tmp_path / f"search-{mode}.png")

    hit.get_by_test_id("result-link").click()
    selected = tab.page.locator("[data-testid=segment].selected")
    tab.wait_for(selected)
    assert selected.count() == 1
    assert selected.get_attribute("data-seq") == "1"
    assert selected.get_attribute("aria-current") == "true"
    assert float(selected.get_attribute("data-t-start")) == segment["t_start"]
    assert tab.page.evaluate("location.hash") == f"#/stream/cam?t={segment['t_start']:g}"
    timeline = tab.page.get_by_test_id("timeline").bounding_box()
    box = selected.bounding_box()
    assert timeline["x"] <= box["x"] and box["x"] + box["width"] <= timeline["x"] + timeline["width"]
    assert tab.page.get_by_test_id("selected-caption").inner_text() == segment["caption"]
    tab.page.screenshot(path=tmp_path / "timeline.png")
    tab.assert_no_errors()


def test_clicking_a_segment_plays_its_clip(tab, server, tmp_path):
    segment = _segment(server, seq=1)
    tab.open("#/stream/cam")
    tab.page.locator("[data-testid=segment][data-seq='1']").click()
    player = tab.page.get_by_test_id("player")
    ready = "document.querySelector('[data-testid=player]').readyState >= 2"  # HAVE_CURRENT_DATA
    tab.page.wait_for_function(ready, timeout=30_000)
    duration = player.evaluate("(video) => video.duration")
    assert abs(duration - (segment["t_end"] - segment["t_start"])) <= 1, duration
    assert "/clip?" in player.evaluate("(video) => video.currentSrc")
    assert tab.page.get_by_test_id("selected-caption").inner_text() == segment["caption"]
    assert "0:00:08–0:00:16" in tab.page.get_by_test_id("selected-time").inner_text()
    tab.page.screenshot(path=tmp_path / "timeline.png")
    tab.assert_no_errors()


def test_captions_from_untrained_parts_carry_a_badge_and_trained_ones_none(tab, server, tmp_path):
    """The tiny test models are random (SigLIP) and untrained (STORM): every stored caption is flagged.
    The page is also handed segment 0 as if every part were trained, which must show no badge."""
    segment = _segment(server, seq=1)
    assert "SigLIP (random)" in segment["untrained"] and segment["model"], segment

    def trained_seq_0(route):
        answer = route.fetch()
        body = answer.json()
        for row in body["items"]:
            if row["chunk_seq"] == 0:
                row["untrained"] = ""
        route.fulfill(response=answer, json=body)

    tab.page.route(lambda url: urlsplit(url).path == "/segments", trained_seq_0)
    tab.open("#/stream/cam")
    badge = tab.page.locator("[data-testid=segment][data-seq='1'] [data-testid=untrained-badge]")
    tab.wait_for(badge)
    assert badge.inner_text() == "untrained"
    title = badge.get_attribute("title")
    assert segment["untrained"] in title and segment["model"] in title, title
    assert tab.page.locator("[data-testid=segment][data-seq='2'] [data-testid=untrained-badge]").is_visible()
    assert tab.page.locator("[data-testid=segment][data-seq='0'] [data-testid=untrained-badge]").count() == 0

    tab.page.locator("[data-testid=segment][data-seq='1']").click()
    panel = tab.page.get_by_test_id("player-panel")
    expect(panel.get_by_test_id("untrained-badge")).to_be_visible()
    assert tab.page.get_by_test_id("selected-caption").inner_text() == segment["caption"]  # the badge is beside it
    tab.page.screenshot(path=tmp_path / "timeline.png")
    tab.page.locator("[data-testid=segment][data-seq='0']").click()
    expect(panel.get_by_test_id("untrained-badge")).to_have_count(0)
    tab.assert_no_errors()


@pytest.mark.parametrize("token", [None, "not-the-token"], ids=["missing", "wrong"])
def test_without_the_right_token_the_page_asks_for_it_and_shows_no_data(tab_with_token, server, tmp_path,
                                                                        token):
    tab = tab_with_token(token)
    tab.open("")
    form = tab.page.get_by_test_id("token-form")
    form.wait_for()
    assert tab.page.locator("[data-testid=stream-card]").count() == 0
    assert tab.page.get_by_test_id("view").inner_text().strip() == ""
    assert tab.page.evaluate("sessionStorage.getItem('vidstorm-token')") is None
    tab.page.screenshot(path=tmp_path / "token-prompt.png")

    tab.page.get_by_test_id("token-input").fill(server.token)
    tab.page.get_by_test_id("token-submit").click()
    tab.wait_for(tab.page.locator("[data-testid=stream-card]"))
    assert form.is_hidden()
    assert tab.page.evaluate("sessionStorage.getItem('vidstorm-token')") == server.token
    tab.assert_no_errors(allowed=UNAUTHORIZED)


def _with_query(url: str, **changes) -> str:
    """url with query parameters replaced (a value of None removes the parameter)."""
    parts = urlsplit(url)
    query = {k: v for k, v in parse_qsl(parts.query, keep_blank_values=True)}
    for key, value in changes.items():
        if value is None:
            query.pop(key, None)
        else:
            query[key] = value
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_media_urls_need_a_valid_unexpired_signature(tab, server, tmp_path):
    segment = _segment(server, seq=1)
    request = tab.page.request
    for signed in (segment["thumbnail_url"], segment["clip_url"]):
        assert signed, segment
        signed = urljoin(server.url + "/", signed)
        query = dict(parse_qsl(urlsplit(signed).query))
        assert {"exp", "sig"} <= set(query), signed
        assert request.get(signed).status == 200, signed
        sig = query["sig"]
        tampered = sig[:-1] + ("0" if sig[-1] != "0" else "1")
        for bad in (_with_query(signed, exp=None, sig=None),  # unsigned
                    _with_query(signed, exp=str(int(time.time()) - 60)),  # expired
                    _with_query(signed, sig=tampered)):
            answer = request.get(bad)
            assert answer.status == 401, (bad, answer.status)
            assert answer.json()["error"], bad
    tab.open("#/stream/cam")  # the page uses the signed URLs as given
    _wait_for_images(tab.page)
    tab.page.screenshot(path=tmp_path / "timeline.png")
    tab.assert_no_errors()


def test_run_now_without_a_scheduler_shows_the_servers_message(tab, tmp_path):
    tab.open("#/jobs")
    row = tab.page.locator("[data-testid=job-row][data-job=nightly]")
    tab.wait_for(row)
    assert "0 3 * * *" in row.inner_text()
    row.get_by_test_id("run-now").click()
    # the page sends X-Vidstorm-Request, so the answer is the scheduler's absence, not a refused request
    expect(row.get_by_test_id("run-result")).to_contain_text("vidstorm scheduler")
    tab.page.screenshot(path=tmp_path / "jobs.png")
    tab.assert_no_errors(allowed=r"status of 503")


def test_the_ingest_page_says_when_none_is_running(tab, tmp_path):
    tab.open("#/progress")
    tab.wait_for(tab.page.get_by_test_id("progress-empty"))
    assert tab.page.locator("[data-testid=progress-bar]").count() == 0
    tab.page.screenshot(path=tmp_path / "progress.png")
    tab.assert_no_errors()


def test_alerts_show_with_thumbnails_arrive_live_and_jump_to_their_moment(tab, server, web_data, tmp_path):
    from pipeline.store import Store

    alerts = server.get("/alerts")["items"]
    assert sorted(a["seq"] for a in alerts) == [0, 1, 2] and {a["status"] for a in alerts} == {"delivered"}
    tab.page.add_init_script("""window.alertItemsRemoved = 0;
        new MutationObserver((changes) => changes.forEach((c) => c.removedNodes.forEach((n) => {
            if (n.dataset && n.dataset.testid === "alert-item") window.alertItemsRemoved += 1;
        }))).observe(document, {childList: true, subtree: true});""")
    tab.open("#/alerts")
    items = tab.page.locator("[data-testid=alert-item]")
    tab.wait_for(items)
    expect(items).to_have_count(3)
    images = _wait_for_images(tab.page)
    assert len(images) == 3 and all(i["width"] > 0 for i in images), images
    # a new alert's row, written while the page is open, shows without a reload (GET /alerts/events)
    Store(web_data / "store").write_alert({
        "alert_id": "live-1", "rule": "late-rule", "query": "q", "stream_id": "cam", "level": "chunk", "seq": 2,
        "t_start": 16.0, "t_end": 24.0, "score": 0.9, "caption": "a late alert", "target": "mqtt:cams",
        "status": "retrying", "attempts": 1, "error": "MQTT broker down", "created_at": time.time()})
    live = tab.page.locator("[data-testid=alert-item][data-alert=live-1]")
    expect(live).to_be_visible(timeout=15000)
    expect(items).to_have_count(4)
    assert "retrying" in live.get_attribute("class") and "MQTT broker down" in live.inner_text()
    # rows the page has are not drawn again when the event stream repeats one (its image would reload)
    assert tab.page.evaluate("window.alertItemsRemoved") == 0
    tab.page.screenshot(path=tmp_path / "alerts.png")
    tab.page.locator("[data-testid=alert-item][data-seq='1'] [data-testid=alert-link]").first.click()
    selected = tab.page.locator("[data-testid=segment][aria-current=true]")
    tab.wait_for(selected)
    assert selected.get_attribute("data-seq") == "1"
    assert tab.page.evaluate("location.hash").startswith("#/stream/cam?t=")
    marks = tab.page.locator("[data-testid=alert-mark]")
    expect(marks).to_have_count(3)
    assert "late-rule" in tab.page.locator("[data-testid=segment][data-seq='2'] [data-testid=alert-mark]").get_attribute("title")
    tab.page.screenshot(path=tmp_path / "timeline-alerts.png")
    tab.assert_no_errors()
