"""A small reward HTTP server on 127.0.0.1 for the remote-reward tests, which can be told to be
slow, flaky or wrong. It records every request and the most requests it ever had in flight."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class RewardServer:
    def __init__(self):
        self.mode = "ok"  # ok | flaky | slow | status400 | notjson | string | nan | wronglen
        self.fail_times = 2  # flaky: 503 this many times per prompt, then answer
        self.delay_s = 0.05  # every request takes at least this long (so requests overlap)
        self.attempts: Counter[str] = Counter()
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.auth.append(self.headers.get("Authorization", ""))
                try:
                    code, reply = server.reply(body)
                    time.sleep(server.delay_s if server.mode != "slow" else 5.0)
                finally:
                    with server._lock:
                        server.in_flight -= 1
                data = reply.encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/score"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    @staticmethod
    def correct(row: dict) -> float:
        return float(row["response"] == row["answer"])

    def reply(self, body) -> tuple[int, str]:
        rows = body if isinstance(body, list) else [body]
        key = rows[0]["prompt"]
        with self._lock:
            self.attempts[key] += 1
            n = self.attempts[key]
        if self.mode == "flaky" and n <= self.fail_times:
            return 503, "overloaded"
        if self.mode == "status400":
            return 400, "bad request: missing field"
        if self.mode == "notjson":
            return 200, "<html>oops</html>"
        if self.mode == "string":
            return 200, json.dumps("high")
        if self.mode == "nan":
            return 200, "NaN"
        values = [{"reward": self.correct(r)} for r in rows]
        if self.mode == "wronglen":
            values = values[:-1]
        return 200, json.dumps(values if isinstance(body, list) else values[0])

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
