"""A Cloud Storage that fails: an HTTP proxy on 127.0.0.1 in front of the emulator (tests/gcs.py)
that answers a chosen share of requests with what the real service sends when it is busy or the
network drops, and can turn the whole bucket away.

Faults, on a seeded share of the requests (`kind` "mixed": each fault drawn in turn among them):
- "503", "429": answered at once with that status and Google's JSON error, never forwarded;
- "reset": forwarded and carried out, then the connection is reset halfway through the answer
  (what a client sees when a load balancer or the network drops a finished request);
- "stall": forwarded after `stall_s` seconds.
`refuse` (404 or 403, None to serve) answers every request so: a bucket deleted, or its permission
taken away, mid-run. Every client is pointed at `url` by `gcs.environment(proxy.port, ...)`.
"""

import http.client
import http.server
import json
import random
import socket
import struct
import threading
import time
import urllib.parse

KINDS = ("503", "429", "reset", "stall")
MESSAGES = {
    403: "hcnet-test@example.iam does not have storage.objects.get access.",
    404: "The specified bucket does not exist.",
    429: "The rate of change requests to the object is too high.",
    503: "We encountered an internal error. Please try again.",
}


class Proxy:
    """Forwards to `upstream` (http://127.0.0.1:P); `kind` at `rate` (a share of requests)."""

    def __init__(
        self,
        upstream: str,
        kind: str | None = None,
        rate: float = 0.0,
        *,
        seed=0,
        stall_s: float = 5.0,
    ):
        assert kind is None or kind in (*KINDS, "mixed"), kind
        self.upstream = urllib.parse.urlsplit(upstream).netloc
        self.kind, self.rate, self.stall_s, self.refuse = kind, rate, stall_s, None
        self.counts = {"requests": 0, **{k: 0 for k in KINDS}, "refused": 0}
        self._random, self._lock = random.Random(seed), threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect

            def log_message(self, *args):
                pass

            def _any(self):
                proxy._serve(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _any

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self):
        self._server.shutdown()
        self._server.server_close()

    def _draw(self) -> str | None:
        with self._lock:
            self.counts["requests"] += 1
            if self.refuse:
                self.counts["refused"] += 1
                return "refuse"
            if self.kind and self._random.random() < self.rate:
                kind = self._random.choice(KINDS) if self.kind == "mixed" else self.kind
                self.counts[kind] += 1
                return kind
            return None

    def _serve(self, h):
        body = _request_body(h)
        fault = self._draw()
        if fault == "refuse":
            return _answer_error(h, self.refuse)
        if fault in ("503", "429"):
            return _answer_error(h, int(fault))
        if fault == "stall":
            time.sleep(self.stall_s)
        status, reason, headers, payload = self._forward(h, body)
        h.send_response_only(status, reason)
        for name, value in headers:
            if name.lower() in ("transfer-encoding", "content-length", "connection"):
                continue
            if name.lower() == "location":  # resumable sessions come back through the proxy
                value = value.replace(f"//{self.upstream}", f"//127.0.0.1:{self.port}")
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        if fault == "reset":  # carried out upstream; the answer cut halfway
            if h.command != "HEAD":
                h.wfile.write(payload[: len(payload) // 2])
            h.wfile.flush()
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
            h.connection.close()
            return
        if h.command != "HEAD":
            h.wfile.write(payload)

    def _forward(self, h, body: bytes):
        conn = http.client.HTTPConnection(self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() != "transfer-encoding"}
            headers["Content-Length"] = str(len(body))
            conn.request(h.command, h.path, body=body, headers=headers)
            r = conn.getresponse()
            return r.status, r.reason, r.getheaders(), r.read()
        finally:
            conn.close()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that hung up (at its exit, or after a reset it was sent)


def _request_body(h) -> bytes:
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        data = b""
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return data
            data += h.rfile.read(size)
            h.rfile.readline()
    return h.rfile.read(int(h.headers.get("Content-Length") or 0))


def _answer_error(h, status: int):
    payload = json.dumps(
        {"error": {"code": status, "message": MESSAGES[status], "errors": []}}
    ).encode()
    h.send_response_only(status)
    h.send_header("Content-Type", "application/json; charset=UTF-8")
    h.send_header("Content-Length", str(len(payload)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(payload)
