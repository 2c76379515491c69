"""A real local HTTP receiver for webhook tests: records every POST; can fail or hold the first ones."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self, fail_first: int = 0, hold_first_s: float = 0.0):
        self.requests: list[dict] = []  # every POST that arrived: {headers, body, status}
        self.fail_first, self.hold_first_s = fail_first, hold_first_s
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    n = len(receiver.requests)
                    status = 500 if n < receiver.fail_first else 200
                    receiver.requests.append({"headers": dict(self.headers), "body": body, "status": status,
                                              "at": time.time()})
                if n == 0 and receiver.hold_first_s:
                    time.sleep(receiver.hold_first_s)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def accepted(self) -> list[dict]:
        """Bodies of the POSTs answered 200, as JSON."""
        with self.lock:
            return [json.loads(r["body"]) for r in self.requests if r["status"] == 200]

    def wait(self, n: int, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.accepted()) < n:
            time.sleep(0.05)
        return self.accepted()
