/* vidstorm web page: streams, a stream's timeline, search, jobs, ingests in progress.
 *
 * Plain ES2020, no build step, nothing fetched from outside the server. Routes live in the hash so
 * links can be shared:
 *   #/streams   #/stream/<urlencoded id>[?t=<seconds>]   #/search[?q=&mode=meaning|keyword]
 *   #/jobs   #/progress   #/alerts
 *
 * Auth: JSON calls send `Authorization: Bearer <token>` when sessionStorage["vidstorm-token"] holds
 * one. A 401 clears it, hides the data and shows the token form. Thumbnail and clip URLs come signed
 * from the API and are used exactly as given (images and videos cannot send headers). POSTs send
 * `X-Vidstorm-Request: 1`.
 *
 * data-testid attributes (tests select on these):
 *   nav, view, error, error-text, error-close, status
 *   token-form, token-input, token-submit, token-message
 *   stream-card (data-stream), stream-thumbnail, stream-summary
 *   timeline (the scroll container), timeline-canvas, ruler, window-band (data-seq),
 *   segment (data-seq, data-t-start, data-t-end; class "selected" + aria-current="true" when selected),
 *   segment-thumbnail, untrained-badge (a caption from random/untrained model parts; title: parts, model),
 *   zoom-in, zoom-out, zoom-fit, stream-summary-text,
 *   player-panel, player (the <video>), selected-caption, selected-time
 *   search-form, search-input, search-mode, search-submit, search-results,
 *   search-result (data-stream, data-seq, data-level), result-thumbnail, result-link, result-score,
 *   search-more
 *   schedules, job-row (data-job), run-now, run-result, runs, run-row (data-job-id)
 *   progress-list, progress-item (data-stream), progress-bar, progress-empty, progress-note
 *   alerts-list, alert-item (data-alert, data-rule, data-stream, data-seq; class = its status),
 *   alert-thumbnail, alert-status, alert-link, alert-mark (on a timeline segment that alerted; title: rules)
 *
 * Alerts arrive live: GET /alerts/events (server-sent events) read with fetch(), which can send the
 * bearer header (EventSource cannot).
 */
"use strict";

const TOKEN_KEY = "vidstorm-token";
const PAGE_LIMIT = 1000;        // the API's largest page of segments
const SEARCH_K = 20;
const POLL_MS = 2000;

// --- small helpers -------------------------------------------------------------------------------

/** h("a", {class: "x", href: "#", text: "hi", onclick: f}, child, ...) -> element. Text goes in as
 *  text nodes, never as HTML: captions are model output. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "style") Object.assign(el.style, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** Seconds of video -> H:MM:SS. */
function hms(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "—";
  const sign = seconds < 0 ? "-" : "";
  const s = Math.floor(Math.abs(seconds));
  const pad = (n) => String(n).padStart(2, "0");
  return `${sign}${Math.floor(s / 3600)}:${pad(Math.floor(s / 60) % 60)}:${pad(s % 60)}`;
}

function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

function streamHref(streamId, t) {
  const base = `#/stream/${encodeURIComponent(streamId)}`;
  return t === undefined || t === null ? base : `${base}?t=${t}`;
}

function thumbnail(url, alt, testid, lazy = true) {
  if (!url) return h("div", {class: "thumb thumb-missing", "data-testid": testid, text: "no image"});
  return h("img", {class: "thumb", src: url, alt, loading: lazy ? "lazy" : "eager", decoding: "async",
                   "data-testid": testid});
}

/** A segment whose caption came from random or untrained model parts gets a badge, so nobody takes
 *  invented text for an observation; null when every part was trained (or the row predates the field). */
function untrainedBadge(seg) {
  if (!seg.untrained) return null;
  return h("span", {class: "badge untrained", "data-testid": "untrained-badge", text: "untrained",
                    title: `written by untrained parts: ${seg.untrained}\nmodel: ${seg.model ?? "?"}`});
}

// --- the API -------------------------------------------------------------------------------------

class AuthError extends Error {}

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

/** One JSON call. Throws AuthError on 401, ApiError with the server's one-line message otherwise. */
async function api(path, params = {}, {method = "GET", signal} = {}) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  const headers = {Accept: "application/json"};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  if (method !== "GET") headers["X-Vidstorm-Request"] = "1";
  let response;
  try {
    response = await fetch(url, {method, headers, signal, cache: "no-store"});
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(`cannot reach the server (${err.message})`, 0);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    if (err.name === "AbortError") throw err;
  }
  const message = body && typeof body.error === "string" ? body.error : null;
  if (response.status === 401) throw new AuthError(message || "this server needs an API token");
  if (!response.ok) throw new ApiError(message || `${path}: HTTP ${response.status}`, response.status);
  if (body === null) throw new ApiError(`${path}: the server's answer is not JSON`, response.status);
  return body;
}

/** Every segment of a stream, page after page (the cursor) until next_cursor is null. */
async function allSegments(streamId, signal, onPage) {
  const rows = [];
  let cursor = null;
  do {
    const page = await api("/segments", {stream: streamId, limit: PAGE_LIMIT, cursor}, {signal});
    rows.push(...page.items);
    cursor = page.next_cursor;
    onPage(rows.length);
  } while (cursor);
  return rows;
}

// --- page frame: errors, token form, routing -----------------------------------------------------

const ui = {};
let current = null;   // the shown view: {stop()}

function showError(message) {
  ui.errorText.textContent = message;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.errorText.textContent = "";
}

function askForToken(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (current) current.stop();
  ui.view.replaceChildren();
  ui.view.hidden = true;
  clearError();
  ui.tokenMessage.textContent = `${message.replace(/[.\s]+$/, "")}. Enter the server's API token.`;
  ui.tokenForm.hidden = false;
  ui.tokenInput.focus();
}

/** What a view does with an error: 401 -> token form, anything else -> the error area. */
function fail(err) {
  if (!err || err.name === "AbortError") return;
  if (err instanceof AuthError) askForToken(err.message);
  else showError(err.message || String(err));
}

function parseRoute() {
  const raw = window.location.hash.replace(/^#\/?/, "");
  const mark = raw.indexOf("?");
  const path = mark < 0 ? raw : raw.slice(0, mark);
  const params = new URLSearchParams(mark < 0 ? "" : raw.slice(mark + 1));
  if (path.startsWith("stream/")) {
    let id;
    try {
      id = decodeURIComponent(path.slice("stream/".length));
    } catch {
      id = path.slice("stream/".length);
    }
    return {name: "stream", id, params};
  }
  return {name: path || "streams", params};
}

const VIEWS = Object.create(null);   // filled below: name -> async (ctx) => void

function render() {
  if (current) current.stop();
  clearError();
  const route = parseRoute();
  const section = route.name === "stream" ? "streams" : route.name;
  for (const link of ui.nav.querySelectorAll("a")) {
    if (link.dataset.route === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const controller = new AbortController();
  const cleanups = [];
  const ctx = {
    route, signal: controller.signal, view: ui.view,
    onStop: (f) => cleanups.push(f),
    get live() { return !controller.signal.aborted; },
  };
  current = {stop() { controller.abort(); cleanups.splice(0).forEach((f) => f()); }};
  ui.view.replaceChildren();
  ui.view.hidden = false;
  const show = VIEWS[route.name];
  if (!show) {
    showError(`no page "${route.name}" here`);
    return;
  }
  show(ctx).catch(fail);
}

function statusLine(text) {
  return h("p", {class: "status", "data-testid": "status", text});
}

// --- Streams -------------------------------------------------------------------------------------

VIEWS.streams = async (ctx) => {
  const status = statusLine("loading streams…");
  ctx.view.append(h("h1", {text: "Streams"}), status);
  const {items} = await api("/streams", {}, {signal: ctx.signal});
  if (!items.length) {
    status.textContent = "no streams stored yet: run `vidstorm ingest`";
    return;
  }
  status.remove();
  ctx.view.append(h("div", {class: "cards"}, items.map(streamCard)));
};

function streamCard(stream) {
  return h("a", {class: "card", href: streamHref(stream.stream_id), "data-testid": "stream-card",
                 "data-stream": stream.stream_id},
    thumbnail(stream.thumbnail_url, `latest frame of ${stream.stream_id}`, "stream-thumbnail", false),
    h("div", {class: "card-body"},
      h("h2", {class: "card-title", text: stream.stream_id}),
      h("p", {class: "card-meta",
              text: `${stream.segments} segments · ${hms(stream.t_start)}–${hms(stream.t_end)}`}),
      stream.last_update ? h("p", {class: "card-meta", text: `updated ${when(stream.last_update)}`}) : null,
      stream.summary ? h("p", {class: "card-summary", "data-testid": "stream-summary", text: stream.summary})
        : null));
}

// --- Timeline ------------------------------------------------------------------------------------

/** Items sorted by t_start, with a running maximum of t_end: the items overlapping [a, b] are found
 *  by a binary search instead of a scan, so 10,000 segments cost what the visible ones cost. */
class TimeIndex {
  constructor(items) {
    this.items = items;
    this.starts = Float64Array.from(items, (it) => it.t_start);
    this.ends = Float64Array.from(items, (it) => Math.max(it.t_end, it.t_start));
    this.endMax = new Float64Array(items.length);
    let running = -Infinity;
    this.ends.forEach((end, i) => { running = Math.max(running, end); this.endMax[i] = running; });
  }

  /** Indices of the items with t_end >= a and t_start <= b, in order. */
  overlapping(a, b) {
    let lo = 0, hi = this.items.length;
    while (lo < hi) {   // first i whose running end reaches a
      const mid = (lo + hi) >> 1;
      if (this.endMax[mid] < a) lo = mid + 1; else hi = mid;
    }
    const out = [];
    for (let i = lo; i < this.items.length && this.starts[i] <= b; i++) {
      if (this.ends[i] >= a) out.push(i);
    }
    return out;
  }

  /** The item holding t (the last one starting at or before t; the first one when t is earlier). */
  at(t) {
    let lo = 0, hi = this.items.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.starts[mid] <= t) lo = mid + 1; else hi = mid;
    }
    return Math.max(0, lo - 1);
  }
}

const RULER_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
                     86400];
const MAX_CANVAS_PX = 16e6;          // Chromium lays out up to ~33M px
const CAPTION_MIN_PX = 140;          // captions show as text on segments at least this wide
const DEFAULT_SEGMENT_PX = 128;
const ZOOM_STEP = 1.5;

/** The stream's segments along a time axis. Only the nodes within one screen of the visible range
 *  exist; scrolling and zooming re-render that range (requestAnimationFrame, at most once a frame). */
class Timeline {
  constructor(segments, windows, onSelect, alerted = new Map()) {
    this.alerted = alerted;      // chunk_seq -> names of the rules that alerted on it
    this.segments = new TimeIndex(segments);
    this.windows = new TimeIndex(windows);
    this.onSelect = onSelect;
    this.t0 = windows.reduce((t, w) => Math.min(t, w.t_start), this.segments.starts[0]);
    this.t1 = windows.reduce((t, w) => Math.max(t, w.t_end), this.segments.endMax[segments.length - 1]);
    this.span = Math.max(this.t1 - this.t0, 1);
    const durations = segments.map((s) => Math.max(s.t_end - s.t_start, 0.001)).sort((a, b) => a - b);
    this.typical = durations[durations.length >> 1];
    this.nodes = new Map();      // segment index -> element
    this.bandNodes = new Map();  // window index -> element
    this.selected = -1;
    this.frame = 0;

    this.ruler = h("div", {class: "tl-ruler", "data-testid": "ruler"});
    this.bands = h("div", {class: "tl-bands"});
    this.row = h("div", {class: "tl-segments"});
    this.canvas = h("div", {class: "tl-canvas", "data-testid": "timeline-canvas"}, this.ruler, this.bands,
                    this.row);
    this.scroller = h("div", {class: "tl-scroll", "data-testid": "timeline", tabindex: "0"}, this.canvas);
    this.row.addEventListener("click", (event) => {
      const node = event.target.closest("[data-index]");
      if (node) this.select(Number(node.dataset.index), {play: true});
    });
    this.scroller.addEventListener("scroll", () => this.schedule(), {passive: true});
    this.scroller.addEventListener("wheel", (event) => this.wheel(event), {passive: false});
    this.resize = new ResizeObserver(() => this.schedule());
    this.resize.observe(this.scroller);
    this.pps = DEFAULT_SEGMENT_PX / this.typical;   // pixels per second of video
  }

  destroy() {
    this.resize.disconnect();
    cancelAnimationFrame(this.frame);
  }

  x(t) {
    return (t - this.t0) * this.pps;
  }

  /** Zoom bounds: out to the whole stream on one screen (but segments no narrower than ~12 px), in to
   *  ~1,600 px per typical segment; never wider than the browser can lay out. */
  clampPps(pps) {
    const width = this.scroller.clientWidth || 800;
    const low = Math.max(width / this.span, 12 / this.typical);
    const high = Math.max(Math.min(1600 / this.typical, MAX_CANVAS_PX / this.span), low);
    return Math.min(Math.max(pps, low), high);
  }

  /** Zoom by a factor, keeping the time under `anchorPx` (from the scroller's left edge) in place. */
  zoom(factor, anchorPx = this.scroller.clientWidth / 2) {
    const anchorT = this.t0 + (this.scroller.scrollLeft + anchorPx) / this.pps;
    this.pps = this.clampPps(this.pps * factor);
    this.canvas.style.width = `${Math.ceil(this.span * this.pps)}px`;
    this.scroller.scrollLeft = this.x(anchorT) - anchorPx;
    this.update();
  }

  fit() {
    this.zoom(0);   // clamped to the smallest zoom
  }

  wheel(event) {
    if (!event.ctrlKey) return;
    event.preventDefault();   // ctrl+wheel zooms the timeline, not the page
    const anchor = event.clientX - this.scroller.getBoundingClientRect().left;
    this.zoom(event.deltaY < 0 ? ZOOM_STEP : 1 / ZOOM_STEP, anchor);
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.update();
    });
  }

  /** (Re)render the nodes within one screen either side of what is visible. */
  update() {
    this.pps = this.clampPps(this.pps);
    this.canvas.style.width = `${Math.ceil(this.span * this.pps)}px`;
    this.canvas.classList.toggle("show-captions", this.typical * this.pps >= CAPTION_MIN_PX);
    const width = this.scroller.clientWidth || 800;
    const left = this.scroller.scrollLeft;
    const a = this.t0 + (left - width) / this.pps;
    const b = this.t0 + (left + 2 * width) / this.pps;
    this.place(this.segments, this.nodes, this.row, a, b, (i) => this.segmentNode(i));
    this.place(this.windows, this.bandNodes, this.bands, a, b, (i) => this.bandNode(i));
    this.drawRuler(a, b);
  }

  place(index, nodes, parent, a, b, make) {
    const wanted = new Set(index.overlapping(a, b));
    for (const [i, node] of nodes) {
      if (!wanted.has(i)) {
        node.remove();
        nodes.delete(i);
      }
    }
    for (const i of wanted) {
      let node = nodes.get(i);
      if (!node) {
        node = make(i);
        nodes.set(i, node);
        parent.append(node);
      }
      const item = index.items[i];
      node.style.left = `${this.x(item.t_start)}px`;
      node.style.width = `${Math.max((item.t_end - item.t_start) * this.pps, 2)}px`;
    }
  }

  segmentNode(i) {
    const seg = this.segments.items[i];
    const times = `${hms(seg.t_start)}–${hms(seg.t_end)}`;
    const node = h("button", {type: "button", class: "seg", "data-testid": "segment", "data-index": i,
                              "data-seq": seg.chunk_seq, "data-t-start": seg.t_start, "data-t-end": seg.t_end,
                              title: `${times} ${seg.caption ?? ""}`},
      thumbnail(seg.thumbnail_url, "", "segment-thumbnail"),
      untrainedBadge(seg),
      h("span", {class: "seg-caption", text: seg.caption ?? ""}));
    if (seg.gap_before) node.classList.add("after-gap");
    const rules = this.alerted.get(seg.chunk_seq);
    if (rules) {
      node.classList.add("alerted");
      node.append(h("span", {class: "alert-mark", "data-testid": "alert-mark", title: `alert: ${rules.join(", ")}`}));
    }
    if (i === this.selected) this.mark(node, true);
    return node;
  }

  bandNode(i) {
    const summary = this.windows.items[i];
    return h("div", {class: "band", "data-testid": "window-band", "data-seq": summary.seq,
                     title: `${hms(summary.t_start)}–${hms(summary.t_end)} ${summary.text ?? ""}`},
      h("span", {text: summary.text ?? ""}));
  }

  drawRuler(a, b) {
    const step = RULER_STEPS.find((s) => s * this.pps >= 90) ?? RULER_STEPS[RULER_STEPS.length - 1];
    const ticks = [];
    for (let t = Math.max(Math.ceil(a / step), Math.ceil(this.t0 / step)) * step; t <= b; t += step) {
      ticks.push(h("div", {class: "tick", style: {left: `${this.x(t)}px`}}, h("span", {text: hms(t)})));
    }
    this.ruler.replaceChildren(...ticks);
  }

  mark(node, on) {
    node.classList.toggle("selected", on);
    if (on) node.setAttribute("aria-current", "true");
    else node.removeAttribute("aria-current");
  }

  /** Select segment i: highlight it, optionally bring it into view, and tell the player. */
  select(i, {play = false, reveal = false} = {}) {
    const before = this.nodes.get(this.selected);
    if (before) this.mark(before, false);
    this.selected = i;
    const seg = this.segments.items[i];
    if (reveal) {
      const middle = this.x((seg.t_start + seg.t_end) / 2);
      this.scroller.scrollLeft = middle - this.scroller.clientWidth / 2;
      this.update();
    }
    const node = this.nodes.get(i);
    if (node) this.mark(node, true);
    this.onSelect(seg, play);
  }

  /** Open at video time t: scroll to, select and briefly flash the segment holding it. */
  openAt(t) {
    const i = this.segments.at(t);
    this.select(i, {reveal: true});
    const node = this.nodes.get(i);
    if (node) {
      node.classList.add("flash");
      node.addEventListener("animationend", () => node.classList.remove("flash"), {once: true});
    }
  }
}

function playerPanel(streamId) {
  const video = h("video", {controls: true, preload: "metadata", playsinline: true, "data-testid": "player"});
  const caption = h("p", {class: "selected-caption", "data-testid": "selected-caption",
                          text: "Click a segment to play it."});
  const time = h("p", {class: "selected-time", "data-testid": "selected-time"});
  const flag = h("p", {class: "selected-flag"});  // the untrained badge of the selected caption, if any
  const panel = h("section", {class: "player-panel", "data-testid": "player-panel"}, video,
                  h("div", {class: "player-text"}, time, flag, caption));
  video.addEventListener("error", () => {
    if (video.getAttribute("src")) {
      const why = video.error?.message || "the server refused it or it is not video";
      showError(`cannot play this clip (${why})`);
    }
  });

  function show(seg, play) {
    time.textContent = `${hms(seg.t_start)}–${hms(seg.t_end)} · segment ${seg.chunk_seq}` +
      (seg.wall_clock ? ` · ${when(seg.wall_clock)}` : "");
    caption.textContent = seg.caption ?? "";
    flag.replaceChildren(...[untrainedBadge(seg)].filter(Boolean));
    if (!seg.clip_url) {
      video.removeAttribute("src");
      video.load();
      caption.textContent += " (no clip stored for this segment)";
      return;
    }
    if (video.getAttribute("src") !== seg.clip_url) video.src = seg.clip_url;
    if (play) {
      video.play().catch((err) => {
        // a newer selection replaced this clip, or autoplay is not allowed: the controls still work
        if (err.name !== "AbortError" && err.name !== "NotAllowedError") {
          showError(`cannot play: ${err.message}`);
        }
      });
    }
  }

  function stop() {
    video.pause();
    video.removeAttribute("src");
    video.load();
  }
  return {panel, show, stop, streamId};
}

VIEWS.stream = async (ctx) => {
  const streamId = ctx.route.id;
  const status = statusLine("loading segments…");
  const summaryText = h("p", {class: "stream-summary-text", "data-testid": "stream-summary-text"});
  ctx.view.append(h("div", {class: "tl-head"},
    h("a", {href: "#/streams", class: "back", text: "← streams"}),
    h("h1", {text: streamId})), summaryText, status);

  const onPage = (n) => { status.textContent = `loading segments… ${n}`; };
  const [segments, windows, whole, alerts] = await Promise.all([
    allSegments(streamId, ctx.signal, onPage),
    api("/summaries", {stream: streamId, level: "window"}, {signal: ctx.signal}),
    api("/summaries", {stream: streamId, level: "stream"}, {signal: ctx.signal}),
    // alert marks are extra: the timeline shows without them if /alerts cannot answer
    api("/alerts", {stream: streamId, limit: PAGE_LIMIT}, {signal: ctx.signal}).catch((err) => {
      if (err.name === "AbortError" || err instanceof AuthError) throw err;
      return {items: []};
    }),
  ]);
  const alerted = new Map();
  for (const a of alerts.items.filter((row) => row.level === "chunk")) {
    const rules = alerted.get(a.seq) ?? [];
    if (!rules.includes(a.rule)) rules.push(a.rule);
    alerted.set(a.seq, rules);
  }
  if (!ctx.live) return;
  const latest = whole.items[whole.items.length - 1];
  summaryText.textContent = latest ? latest.text : "";
  if (!segments.length) {
    status.textContent = "this stream has no segments";
    return;
  }
  segments.sort((p, q) => p.t_start - q.t_start || p.chunk_seq - q.chunk_seq);
  const windowRows = windows.items.filter((w) => w.level === "window")
    .sort((p, q) => p.t_start - q.t_start || p.seq - q.seq);

  const player = playerPanel(streamId);
  const timeline = new Timeline(segments, windowRows, (seg, play) => {
    player.show(seg, play);
    // the address names the selected moment, without re-rendering the page
    history.replaceState(null, "", streamHref(streamId, seg.t_start));
  }, alerted);
  ctx.onStop(() => { timeline.destroy(); player.stop(); });
  status.textContent = `${segments.length} segments · ${hms(timeline.t0)}–${hms(timeline.t1)}` +
    ` · ${windowRows.length} window summaries`;
  const tools = h("div", {class: "tl-tools"},
    h("button", {type: "button", "data-testid": "zoom-out", title: "Zoom out (ctrl+wheel)",
                 onclick: () => timeline.zoom(1 / ZOOM_STEP), text: "−"}),
    h("button", {type: "button", "data-testid": "zoom-in", title: "Zoom in (ctrl+wheel)",
                 onclick: () => timeline.zoom(ZOOM_STEP), text: "+"}),
    h("button", {type: "button", "data-testid": "zoom-fit", title: "Zoom out fully",
                 onclick: () => timeline.fit(), text: "fit"}));
  ctx.view.append(tools, timeline.scroller, player.panel);
  timeline.update();
  const t = Number.parseFloat(ctx.route.params.get("t"));
  if (Number.isFinite(t)) timeline.openAt(t);
};

// --- Search --------------------------------------------------------------------------------------

VIEWS.search = async (ctx) => {
  const q = ctx.route.params.get("q") ?? "";
  const mode = ctx.route.params.get("mode") === "keyword" ? "keyword" : "meaning";
  const input = h("input", {type: "search", name: "q", value: q, placeholder: "what happened?",
                            "data-testid": "search-input", "aria-label": "Search", required: true});
  const select = h("select", {name: "mode", "data-testid": "search-mode", "aria-label": "Search mode"},
    h("option", {value: "meaning", text: "by meaning"}),
    h("option", {value: "keyword", text: "by keyword"}));
  select.value = mode;
  const form = h("form", {class: "search-form", "data-testid": "search-form", role: "search"},
    input, select, h("button", {type: "submit", "data-testid": "search-submit", text: "Search"}));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const hash = `#/search?${new URLSearchParams({q: input.value.trim(), mode: select.value})}`;
    if (window.location.hash === hash) render();   // the same search again: hashchange will not fire
    else window.location.hash = hash;
  });
  const results = h("ol", {class: "results", "data-testid": "search-results"});
  const status = statusLine(q ? "searching…" : "");
  ctx.view.append(h("h1", {text: "Search"}), form, status, results);
  if (!q.trim()) {
    input.focus();
    return;
  }
  if (mode === "meaning") {
    const {items} = await api("/search", {q, k: SEARCH_K}, {signal: ctx.signal});
    results.append(...items.map((hit) => searchResult(hit, hit.seq, hit.text, hit.level, hit.score)));
    status.textContent = items.length ? `${items.length} closest in meaning` : "nothing found";
    return;
  }
  let cursor = null;
  const more = h("button", {type: "button", class: "more", "data-testid": "search-more", text: "more",
                            hidden: true});
  ctx.view.append(more);
  const page = async () => {
    const answer = await api("/segments", {q, limit: 100, cursor}, {signal: ctx.signal});
    results.append(...answer.items.map(
      (seg) => searchResult(seg, seg.chunk_seq, seg.caption, "chunk", null)));
    cursor = answer.next_cursor;
    more.hidden = !cursor;
    status.textContent = results.children.length ? `${results.children.length} segments hold every word`
      : "nothing found";
  };
  more.addEventListener("click", () => page().catch(fail));
  await page();
};

function searchResult(row, seq, text, level, score) {
  const href = streamHref(row.stream_id, row.t_start);
  return h("li", {class: "result", "data-testid": "search-result", "data-stream": row.stream_id,
                  "data-seq": seq, "data-level": level},
    h("a", {href, class: "result-thumb", tabindex: "-1"},
      thumbnail(row.thumbnail_url, "", "result-thumbnail")),
    h("div", {class: "result-body"},
      h("p", {class: "result-meta"},
        h("strong", {text: row.stream_id}), ` · ${hms(row.t_start)}–${hms(row.t_end)}`,
        level !== "chunk" ? h("span", {class: "badge", text: `${level} summary`}) : null,
        untrainedBadge(row),  // /segments rows carry `untrained`; /search hits do not
        score === null || score === undefined ? null
          : h("span", {class: "score", "data-testid": "result-score",
                       text: `score ${Number(score).toFixed(3)}`})),
      h("p", {class: "result-text", text: text ?? ""}),
      h("a", {href, class: "result-link", "data-testid": "result-link", text: "open in timeline →"})));
}

// --- Jobs ----------------------------------------------------------------------------------------

VIEWS.jobs = async (ctx) => {
  const schedules = h("tbody");
  const runs = h("tbody");
  ctx.view.append(
    h("h1", {text: "Jobs"}),
    h("table", {class: "table", "data-testid": "schedules"},
      h("thead", {}, h("tr", {}, ["Name", "Kind", "Schedule", "Next run", "Last run", ""].map(
        (title) => h("th", {text: title})))), schedules),
    h("h2", {text: "Recent runs"}),
    h("table", {class: "table", "data-testid": "runs"},
      h("thead", {}, h("tr", {}, ["Run", "Job", "Kind", "Status", "Started", "Finished", "Stream",
                                  "Detail"].map((title) => h("th", {text: title})))), runs));

  const loadRuns = async () => {
    const {items} = await api("/jobs", {limit: 50}, {signal: ctx.signal});
    runs.replaceChildren(...items.map(runRow));
    if (!items.length) runs.append(emptyRow(8, "no runs yet"));
  };
  const loadSchedules = async () => {
    const {items} = await api("/schedules", {}, {signal: ctx.signal});
    schedules.replaceChildren(...items.map((job) => scheduleRow(job, () => loadRuns().catch(fail))));
    if (!items.length) schedules.append(emptyRow(6, "no job specs: add one with `vidstorm jobs add`"));
  };
  // one failing listing still shows the other
  const outcomes = await Promise.allSettled([loadSchedules(), loadRuns()]);
  outcomes.filter((o) => o.status === "rejected").forEach((o) => fail(o.reason));
};

function emptyRow(columns, text) {
  return h("tr", {}, h("td", {colspan: columns, class: "empty", text}));
}

function scheduleRow(job, refreshRuns) {
  const result = h("span", {class: "run-result", "data-testid": "run-result"});
  const button = h("button", {type: "button", "data-testid": "run-now", text: "Run now"});
  button.addEventListener("click", async () => {
    button.disabled = true;
    result.className = "run-result";
    result.textContent = "requesting…";
    try {
      const answer = await api(`/jobs/${encodeURIComponent(job.name)}/run`, {}, {method: "POST"});
      result.textContent = `run ${answer.run_id} requested`;
      refreshRuns();
    } catch (err) {
      if (err instanceof AuthError) return fail(err);
      result.classList.add("failed");
      result.textContent = err.message;
    } finally {
      button.disabled = false;
    }
  });
  const last = job.last_status
    ? `${job.last_status} · ${when(job.last_finished_at || job.last_started_at)}` : "never";
  return h("tr", {"data-testid": "job-row", "data-job": job.name},
    h("td", {text: job.name}), h("td", {text: job.kind}),
    h("td", {}, h("code", {text: job.schedule ?? "manual"}), job.timezone ? ` ${job.timezone}` : ""),
    h("td", {text: when(job.next_run)}),
    h("td", {class: `status-${job.last_status ?? "none"}`, text: last}),
    h("td", {}, button, " ", result));
}

function runRow(run) {
  const detail = run.error || (run.detail && typeof run.detail === "object" ? JSON.stringify(run.detail)
    : run.detail) || (run.source ?? "");
  return h("tr", {"data-testid": "run-row", "data-job-id": run.job_id},
    h("td", {}, h("code", {text: run.job_id})), h("td", {text: run.job_name ?? ""}),
    h("td", {text: run.kind ?? ""}), h("td", {class: `status-${run.status}`, text: run.status}),
    h("td", {text: when(run.started_at)}), h("td", {text: when(run.finished_at)}),
    h("td", {text: run.stream_id ?? ""}), h("td", {class: "detail", text: String(detail)}));
}

// --- Ingests in progress -------------------------------------------------------------------------

VIEWS.progress = async (ctx) => {
  const list = h("div", {class: "progress-list", "data-testid": "progress-list"});
  const note = h("p", {class: "note", "data-testid": "progress-note", hidden: true});
  ctx.view.append(h("h1", {text: "Ingests in progress"}), list, note);
  let timer = 0;

  // every 2 s while this view is shown and the tab is visible; never two requests at once
  const tick = async () => {
    timer = 0;
    if (!ctx.live || document.visibilityState !== "visible") return;
    try {
      const answer = await api("/progress", {}, {signal: ctx.signal});
      list.replaceChildren(...answer.items.map(progressItem));
      if (!answer.items.length) {
        list.append(h("p", {class: "empty", "data-testid": "progress-empty", text: "no ingest running"}));
      }
      note.hidden = !answer.note;
      note.textContent = answer.note ?? "";
    } catch (err) {
      fail(err);
      if (err instanceof AuthError || err.name === "AbortError") return;
    }
    if (ctx.live && document.visibilityState === "visible") timer = setTimeout(tick, POLL_MS);
  };
  const onVisibility = () => {
    if (document.visibilityState === "visible" && !timer) tick();
  };
  document.addEventListener("visibilitychange", onVisibility);
  ctx.onStop(() => {
    clearTimeout(timer);
    document.removeEventListener("visibilitychange", onVisibility);
  });
  await tick();
};

function progressItem(item) {
  const bar = h("progress", {"data-testid": "progress-bar", max: item.total_s || 1,
                             "aria-label": `${item.stream_id} progress`});
  let text;
  if (item.total_s) {
    bar.value = Math.min(item.done_s, item.total_s);
    const percent = Math.floor((100 * item.done_s) / item.total_s);
    text = `${hms(item.done_s)} of ${hms(item.total_s)} (${percent}%)`;
  } else {
    text = `${hms(item.done_s)} so far (live)`;   // no value: an indeterminate bar
  }
  if (item.x_realtime) text += ` · ${item.x_realtime.toFixed(1)}× real time`;
  if (item.eta_s !== null && item.eta_s !== undefined) text += ` · ETA ${hms(item.eta_s)}`;
  return h("div", {class: "progress-item", "data-testid": "progress-item", "data-stream": item.stream_id},
    h("p", {}, h("strong", {text: item.stream_id}),
      item.source ? h("span", {class: "source", text: ` ${item.source}`}) : null),
    bar, h("p", {class: "progress-text", text}));
}

// --- Alerts --------------------------------------------------------------------------------------

VIEWS.alerts = async (ctx) => {
  const status = statusLine("loading alerts…");
  const list = h("ol", {class: "alerts", "data-testid": "alerts-list"});
  ctx.view.append(h("h1", {text: "Alerts"}), status, list);
  const shown = new Map();   // "<alert_id>|<target>" -> its item: a later state replaces it
  const put = (row) => {
    const key = `${row.alert_id}|${row.target}`;
    const old = shown.get(key);
    // the event stream may send a row again (its `since` is in ms here, in µs on the server): keep the node
    if (old && old.dataset.updated === String(row.updated_at)) return;
    const node = alertItem(row);
    if (old) old.replaceWith(node);
    else list.prepend(node);
    shown.set(key, node);
    status.textContent = `${shown.size} alerts`;
  };
  const {items} = await api("/alerts", {limit: 200}, {signal: ctx.signal});
  if (!ctx.live) return;
  items.slice().reverse().forEach(put);
  if (!items.length) status.textContent = "no alerts yet: add a rule with `vidstorm watch add`";
  const since = items.reduce((t, row) => Math.max(t, Date.parse(row.updated_at) / 1000 || 0), 0);
  followEvents("/alerts/events", {since}, ctx, (event, row) => { if (event === "alert") put(row); });
};

function alertItem(row) {
  const score = typeof row.score === "number" ? ` · score ${row.score.toFixed(2)}` : "";
  const state = `${row.status} ×${row.attempts ?? 0} → ${row.target}` + (row.error ? ` (${row.error})` : "");
  return h("li", {class: `alert ${row.status}`, "data-testid": "alert-item", "data-alert": row.alert_id,
                  "data-rule": row.rule, "data-stream": row.stream_id, "data-seq": row.seq,
                  "data-updated": row.updated_at},
    thumbnail(row.thumbnail_url, `${row.stream_id} at ${hms(row.t_start)}`, "alert-thumbnail"),
    h("div", {class: "alert-body"},
      h("p", {}, h("strong", {text: row.rule}),
        ` · ${row.stream_id} · ${hms(row.t_start)}–${hms(row.t_end)}${score}`),
      h("p", {class: "alert-caption", text: row.caption ?? ""}),
      h("p", {class: "alert-meta", "data-testid": "alert-status", text: state}),
      h("a", {href: streamHref(row.stream_id, row.t_start), "data-testid": "alert-link", text: "jump to the moment"})));
}

/** Follow a server-sent-events endpoint with fetch() (it sends the bearer header), calling
 *  onEvent(name, data) for each event; reconnects after 2 s until the view stops. */
async function followEvents(path, params, ctx, onEvent) {
  while (ctx.live) {
    const url = new URL(path, window.location.origin);
    for (const [key, value] of Object.entries(params)) url.searchParams.set(key, value);
    const headers = {Accept: "text/event-stream"};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    try {
      const response = await fetch(url, {headers, signal: ctx.signal, cache: "no-store"});
      if (response.status === 401) throw new AuthError("this server needs an API token");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, {stream: true});
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let name = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) name = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data) {
            const row = JSON.parse(data);
            if (row.updated_at) params.since = Math.max(params.since || 0, Date.parse(row.updated_at) / 1000 || 0);
            onEvent(name, row);
          }
        }
      }
    } catch (err) {
      if (err.name === "AbortError") return;
      if (err instanceof AuthError) throw err;
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

// --- start ---------------------------------------------------------------------------------------

function start() {
  ui.view = document.getElementById("view");
  ui.nav = document.querySelector("[data-testid=nav]");
  ui.error = document.querySelector("[data-testid=error]");
  ui.errorText = document.querySelector("[data-testid=error-text]");
  ui.tokenForm = document.querySelector("[data-testid=token-form]");
  ui.tokenInput = document.querySelector("[data-testid=token-input]");
  ui.tokenMessage = document.querySelector("[data-testid=token-message]");
  document.querySelector("[data-testid=error-close]").addEventListener("click", clearError);
  ui.tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = ui.tokenInput.value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    ui.tokenInput.value = "";
    ui.tokenForm.hidden = true;
    render();
  });
  // anything that escapes a view still says something on the page
  window.addEventListener("error", (event) => showError(event.message || "unexpected error"));
  window.addEventListener("unhandledrejection", (event) => fail(event.reason));
  window.addEventListener("hashchange", render);
  render();
}

start();
