"""The Lambda runtime API, as Lambda serves it to one instance of a function, and the two ways
the stack invokes that function: API Gateway's HTTP API (payload format 2.0) and a direct
Invoke.

The rehearsal used `cargo lambda watch --only-lambda-apis` for this until one CI run in many
hung after a POST /v1/purchases the function had answered: neither the answer nor the next
request ever reached the other side, and nothing logged why. This emulator is small enough
to reason about, logs every hand-over and every answer with the request id, and turns a
function that dies or never answers into a StepFailed-style error instead of a hang.

The runtime side follows the documented API (docs.aws.amazon.com/lambda, "Using the Lambda
runtime API for custom runtimes"):
    GET  /2018-06-01/runtime/invocation/next
    POST /2018-06-01/runtime/invocation/{id}/response
    POST /2018-06-01/runtime/invocation/{id}/error
    POST /2018-06-01/runtime/init/error
"""

import base64
import datetime as dt
import http.server
import json
import queue
import select
import socket
import sys
import threading
import time
import urllib.parse
import uuid

API = "/2018-06-01/runtime"


class NoAnswer(Exception):
    """The function died, or did not answer within the wait."""


class _Invocation:
    def __init__(self, payload, timeout_s):
        self.id = str(uuid.uuid4())
        self.payload = payload
        self.timeout_s = timeout_s
        self.handed_at = None
        self.done = threading.Event()
        self.status = None  # "response" or "error"
        self.body = None


class RuntimeApi:
    """One function instance's runtime API on 127.0.0.1. `address` is what Lambda puts in
    AWS_LAMBDA_RUNTIME_API (host:port, no scheme)."""

    def __init__(self, function_name, function_arn, log):
        self.function_name = function_name
        self.function_arn = function_arn
        self.log_file = log
        self.log_lock = threading.Lock()
        self.pending = queue.Queue()
        self.by_id = {}
        self.init_errors = []
        self.closing = threading.Event()
        emulator = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the runtime client pools connections

            def log_message(self, *a):
                pass

            def reply(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()

            def do_GET(self):
                if self.path != f"{API}/invocation/next":
                    return self.reply(404, b'{"errorType":"NotFound"}')
                inv = emulator._next_for(self.connection)
                if inv is None:  # the function went away while it waited
                    self.close_connection = True
                    return
                deadline_ms = int((time.time() + inv.timeout_s) * 1000)
                inv.handed_at = time.time()
                try:
                    self.reply(200, inv.payload, [
                        ("Content-Type", "application/json"),
                        ("Lambda-Runtime-Aws-Request-Id", inv.id),
                        ("Lambda-Runtime-Deadline-Ms", str(deadline_ms)),
                        ("Lambda-Runtime-Invoked-Function-Arn", emulator.function_arn),
                        ("Lambda-Runtime-Trace-Id",
                         f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0"),
                    ])
                except OSError as e:
                    # The poller died between our check and the write: the next one gets it.
                    emulator.log(f"could not hand {inv.id} over ({e}); queued again")
                    inv.handed_at = None
                    emulator.pending.put(inv)
                    self.close_connection = True
                    return
                emulator.log(f"handed {inv.id} to the function")

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self.path[len(API):].strip("/").split("/") \
                    if self.path.startswith(API) else []
                if parts == ["init", "error"]:
                    emulator.init_errors.append(body.decode(errors="replace"))
                    emulator.log(f"init error: {body[:300]!r}")
                    return self.reply(202, b'{"status":"OK"}')
                if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response",
                                                                                 "error"):
                    inv = emulator.by_id.get(parts[1])
                    if inv is None or inv.done.is_set():
                        return self.reply(400, b'{"errorType":"InvalidRequestID"}')
                    inv.status, inv.body = parts[2], body
                    emulator.log(f"{parts[2]} for {inv.id}: {len(body)} bytes after "
                                 f"{time.time() - inv.handed_at:.3f} s")
                    inv.done.set()
                    return self.reply(202, b'{"status":"OK"}')
                self.reply(404, b'{"errorType":"NotFound"}')

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):
                # A function process stopped mid-request (a cold start, a negative-control
                # run) resets its connection: the emulator's log says so, stderr stays clean.
                emulator.log(f"connection from {client_address} ended: {sys.exc_info()[1]!r}")

        self.server = Server(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.log(f"runtime API on {self.address}")

    def log(self, line):
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]
        with self.log_lock:
            self.log_file.write(f"{stamp} {line}\n")
            self.log_file.flush()

    def _next_for(self, conn):
        """Blocks until an invocation is pending; None once the polling connection is closed
        (the process was stopped), so that no invocation is handed to a dead instance."""
        while not self.closing.is_set():
            if _peer_closed(conn):
                return None
            try:
                inv = self.pending.get(timeout=0.2)
            except queue.Empty:
                continue
            if _peer_closed(conn):
                self.log(f"the poller of {inv.id} has gone; queued again")
                self.pending.put(inv)
                return None
            return inv
        return None

    def invoke(self, payload, timeout_s, alive, wait_s):
        """Queues one invocation and waits for its answer: ("response"|"error", bytes).
        `alive()` raises if the function's process has exited; `wait_s` bounds the wait."""
        inv = _Invocation(payload, timeout_s)
        self.by_id[inv.id] = inv
        self.pending.put(inv)
        self.log(f"queued {inv.id} ({len(payload)} bytes)")
        start = time.time()
        try:
            while not inv.done.wait(0.2):
                alive()
                if time.time() - start > wait_s:
                    where = ("the function took it and never answered" if inv.handed_at
                             else "the function never asked for it")
                    raise NoAnswer(f"no answer to {inv.id} in {wait_s:.0f} s: {where}")
        finally:
            self.by_id.pop(inv.id, None)
        return inv.status, inv.body

    def close(self):
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


def _peer_closed(conn):
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        if not readable:
            return False
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def http_api_event(method, path, headers, body, account, api_id, region):
    """The event API Gateway's HTTP API sends with payload format 2.0 (the template's
    HttpApi): lower-case header names, the query string raw and parsed, the body as text."""
    raw_path, _, raw_query = path.partition("?")
    params = {}
    for k, v in urllib.parse.parse_qsl(raw_query, keep_blank_values=True):
        params[k] = f"{params[k]},{v}" if k in params else v
    now = dt.datetime.now(dt.timezone.utc)
    domain = f"{api_id}.execute-api.{region}.amazonaws.com"
    hdrs = {"host": domain, "user-agent": "affinity-rehearsal",
            "x-forwarded-proto": "https", "x-forwarded-port": "443"}
    for k, v in headers.items():
        hdrs[k.lower()] = v
    if body is not None:
        hdrs["content-length"] = str(len(body))
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": hdrs,
        "requestContext": {
            "accountId": account,
            "apiId": api_id,
            "domainName": domain,
            "domainPrefix": api_id,
            "http": {"method": method, "path": raw_path, "protocol": "HTTP/1.1",
                     "sourceIp": "127.0.0.1", "userAgent": "affinity-rehearsal"},
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "isBase64Encoded": False,
    }
    if params:
        event["queryStringParameters"] = params
    if body is not None:
        event["body"] = body.decode()
    return json.dumps(event).encode()


def http_api_response(raw):
    """(status, headers, body bytes) from the function's payload-2.0 answer."""
    out = json.loads(raw)
    body = out.get("body") or ""
    data = base64.b64decode(body) if out.get("isBase64Encoded") else body.encode()
    headers = {k.lower(): v for k, v in (out.get("headers") or {}).items()}
    return int(out.get("statusCode", 200)), headers, data
