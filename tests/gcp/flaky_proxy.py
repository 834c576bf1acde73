"""A fault-injecting HTTP proxy on 127.0.0.1 for the fault tests of tests/gcp (test_bigquery_faults.py).

FlakyProxy forwards every request to an upstream emulator, except those its `decide` function picks to fail:

    "503" / "500"    answered at once with that status and a JSON error body shaped like Google's
                     (error.errors[0].reason backendError / internalError), without reaching the emulator;
    "reset"          the connection is reset (RST) without an answer, without reaching the emulator;
    "lost"           forwarded, so the emulator acts on it, then answered 503: the answer was lost on the
                     way back, and a retry repeats a request that already took effect;
    ("fail", code)   answered with `code` and a JSON error body (reason invalidQuery for 400): a permanent error.

As real BigQuery does and bqemulator does not, a job insert whose job id was inserted before (say, a retry after
a lost answer) is answered 409 Already Exists without reaching the emulator, so clients take their "the job
exists: fetch it" path instead of the emulator running the job twice (unless jobs_conflict=False).

`decide(method, path, body) -> fault or None` is called once per request; see seeded_faults and fail_matching.
Every request is recorded in `log` as (method, path, fault, status): status is the emulator's answer (None when
the request did not reach it).
"""

from __future__ import annotations

import http.client
import http.server
import json
import random
import socket
import struct
import threading
import urllib.parse

_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "content-length", "host"}
_REASONS = {400: ("invalidQuery", "INVALID_ARGUMENT"), 404: ("notFound", "NOT_FOUND"),
            409: ("duplicate", "ALREADY_EXISTS"), 500: ("internalError", "INTERNAL"),
            503: ("backendError", "UNAVAILABLE")}


def error_body(code: int, message: str) -> bytes:
    reason, status = _REASONS.get(code, ("backendError", "UNAVAILABLE"))
    return json.dumps({"error": {"code": code, "message": message, "status": status,
                                 "errors": [{"message": message, "domain": "global", "reason": reason}]}}).encode()


def seeded_faults(rate: float, seed: int, kinds=("503", "500", "reset", "lost"), match=None):
    """Fails a random, seeded `rate` share of the requests `match(method, path, body)` picks (all by default),
    each with a fault drawn from `kinds`."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def decide(method, path, body):
        if match is not None and not match(method, path, body):
            return None
        with lock:
            if rng.random() >= rate:
                return None
            return rng.choice(kinds)

    return decide


def _job_id(method, path, body):
    """(project, location, job id) of a jobs.insert naming its job id; None for other requests."""
    if not (method == "POST" and path.split("?")[0].endswith("/jobs")):
        return None
    try:
        reference = json.loads(body).get("jobReference") or {}
    except ValueError:
        return None
    if not reference.get("jobId"):
        return None
    return reference.get("projectId", ""), reference.get("location") or "US", reference["jobId"]


def first_attempts_fail(kinds=("503", "lost", "500", "reset"), then=None, match=None):
    """Fails the first attempt of every distinct request that `match` picks (all by default) (method, path without
    its query, body), with the faults of `kinds` in turn, so that each such call has to be retried at least once.
    Later attempts, and requests `match` leaves, go to `then` (another decide function; none fail without it)."""
    seen = set()
    lock = threading.Lock()
    turn = iter(range(1 << 62))

    def decide(method, path, body):
        key = (method, path.split("?")[0], body)
        if match is None or match(method, path, body):
            with lock:
                if key not in seen:
                    seen.add(key)
                    return kinds[next(turn) % len(kinds)]
        return then(method, path, body) if then is not None else None

    return decide


def is_job_insert(method, path, body) -> bool:
    """jobs.insert: a load, copy or query job (the MERGE) is started."""
    return method == "POST" and path.split("?")[0].endswith("/jobs")


def fail_matching(predicate, code: int = 400):
    """Fails, permanently, every request `predicate(method, path, body)` picks, with `code`."""
    def decide(method, path, body):
        return ("fail", code) if predicate(method, path, body) else None

    return decide


class FlakyProxy:
    """Forwards to `upstream` (http://HOST:PORT) from 127.0.0.1:PORT (url), failing what `decide` picks."""

    def __init__(self, upstream: str, decide=None, jobs_conflict: bool = True):
        parsed = urllib.parse.urlsplit(upstream)
        self._upstream = (parsed.hostname, parsed.port)
        self.decide = decide or (lambda method, path, body: None)
        self.log: list[list] = []
        self._lock = threading.Lock()
        self._jobs_conflict, self._job_ids = jobs_conflict, set()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # Quiet.
                pass

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _answer(self, status: int, headers, body: bytes) -> None:
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

            def _forward(self, body: bytes):
                connection = http.client.HTTPConnection(*proxy._upstream, timeout=120)
                try:
                    headers = {name: value for name, value in self.headers.items()
                               if name.lower() not in _HOP_BY_HOP}
                    headers["Host"] = f"{proxy._upstream[0]}:{proxy._upstream[1]}"
                    connection.request(self.command, self.path, body=body if body or self.command in
                                       ("POST", "PUT", "PATCH") else None, headers=headers)
                    response = connection.getresponse()
                    return response.status, response.getheaders(), response.read()
                finally:
                    connection.close()

            def _handle(self):
                body = self._read_body()
                fault = proxy.decide(self.command, self.path, body)
                entry = [self.command, self.path, fault, None]
                with proxy._lock:
                    proxy.log.append(entry)
                if fault == "reset":
                    return self._reset()
                if fault in ("503", "500"):
                    code = int(fault)
                    return self._answer(code, [("Content-Type", "application/json")],
                                        error_body(code, f"injected {code} by the test proxy"))
                if isinstance(fault, tuple) and fault[0] == "fail":
                    return self._answer(fault[1], [("Content-Type", "application/json")],
                                        error_body(fault[1], f"injected permanent {fault[1]} by the test proxy"))
                job = _job_id(self.command, self.path, body) if proxy._jobs_conflict else None
                if job is not None:
                    with proxy._lock:
                        seen, _ = job in proxy._job_ids, proxy._job_ids.add(job)
                    if seen:
                        entry[3] = "409 from the proxy"
                        return self._answer(409, [("Content-Type", "application/json")], error_body(
                            409, f"Already Exists: Job {job[0]}:{job[1]}.{job[2]}"))
                try:
                    status, headers, answer = self._forward(body)
                except OSError as e:
                    return self._answer(502, [("Content-Type", "application/json")], error_body(502, str(e)))
                entry[3] = status
                if fault == "lost":
                    return self._answer(503, [("Content-Type", "application/json")],
                                        error_body(503, "injected 503 after the emulator answered"))
                return self._answer(status, headers, answer)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="flaky-proxy", daemon=True)

    def start(self) -> FlakyProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def faults(self) -> list[list]:
        """The requests that were failed, as (method, path, fault, status)."""
        with self._lock:
            return [entry for entry in self.log if entry[2] is not None]

    def __enter__(self) -> FlakyProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
