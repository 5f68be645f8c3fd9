"""
HTTP that is safe to expose, knowing nothing of chat (the routes are in web_server.py):

- every request is read against a deadline (Limits.request_timeout, for the request line, headers
  and body together), so a client that sends one byte a second cannot hold a connection thread;
  the request line and headers are bounded in bytes and lines, the body in bytes;
- every error, the standard library's own included, is one JSON shape (web_request.ApiError),
  always with an HTTP/1.1 status line;
- an optional API key, checked in constant time: "Authorization: Bearer <key>" from programs, or
  HTTP Basic auth (any user name, the key as the password), which a browser asks for by itself;
- open connections are bounded in all and per client address; past that a connection is answered
  at once (503 or 429) and closed, before it gets a thread.
"""
import base64
import hashlib
import hmac
import io
import ipaddress
import json
import select
import socket
import threading
import time
import traceback
from collections import Counter
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from nanochat.common import UserError
from nanochat.web_request import ApiError, Limits


def is_loopback(host):
    """True for localhost and loopback addresses (127.0.0.0/8, ::1): this machine only."""
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def check_exposure(host, api_key, allow_no_auth):
    """Raises UserError for listening beyond this machine (not loopback) with no key, unless allow_no_auth."""
    if api_key is None and not allow_no_auth and not is_loopback(host):
        raise UserError(f"refusing to listen on {host or 'every address'} without an API key: anyone who can reach it "
                        f"could use the model. Set NANOCHAT_API_KEY (or --api_key), or pass --no_auth if that is intended")
    if api_key is not None:
        ApiKey(api_key)  # raises for a malformed key


class ApiKey:
    """The server's API key, held as a digest; matches() compares in constant time."""
    def __init__(self, key):
        if not key or not key.isascii() or not key.isprintable() or " " in key:
            raise UserError("the API key must be printable ASCII without spaces")
        self._digest = hashlib.sha256(key.encode()).digest()

    def matches(self, authorization):
        """True for "Bearer <key>", or "Basic base64(<any user>:<key>)" (what a browser sends)."""
        scheme, _, value = (authorization or "").strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "basic":
            try:
                value = base64.b64decode(value, validate=True).decode("utf-8").partition(":")[2]
            except ValueError:  # not base64, or not UTF-8
                value = ""
        elif scheme.lower() != "bearer":
            value = ""
        # digests of the same length: the comparison's time says nothing of the key, not even its length
        given = hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()
        return hmac.compare_digest(given, self._digest)

# -----------------------------------------------------------------------------
# reading a request: against a deadline, and bounded

class HeadTooLarge(Exception):
    """The request line and headers are over Limits.max_header_bytes or Limits.max_headers."""


class TooSlow(TimeoutError):
    """The request did not arrive within Limits.request_timeout."""


class _DeadlineSocket(io.RawIOBase):
    """The connection's bytes; while a deadline is set, every read waits only for what is left of it."""
    def __init__(self, sock):
        self.sock, self.deadline, self.received = sock, None, 0

    def readable(self):
        return True

    def readinto(self, b):
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TooSlow()
            self.sock.settimeout(left)
        try:
            n = self.sock.recv_into(b)
        except TimeoutError:
            if self.deadline is not None:
                raise TooSlow() from None
            raise
        self.received += n
        return n


class RequestReader:
    """A handler's rfile: the buffered connection, with the head of each request bounded in bytes and lines."""
    def __init__(self, sock):
        self.raw = _DeadlineSocket(sock)
        self.buffered = io.BufferedReader(self.raw)
        self.head_left = self.lines_left = None

    def begin(self, deadline, max_bytes, max_lines):
        """A new request: it must arrive by the deadline, its head within max_bytes and max_lines headers."""
        self.raw.deadline, self.raw.received = deadline, 0
        self.head_left, self.lines_left = max_bytes, max_lines + 2  # the request line and the blank line too

    def end_head(self):
        self.head_left = self.lines_left = None

    def end(self, timeout):
        """The request is read: no deadline any more, and the socket's timeout back to timeout (for writes)."""
        self.end_head()
        self.raw.deadline = None
        self.raw.sock.settimeout(timeout)

    def readline(self, limit=-1):
        if self.head_left is None:
            return self.buffered.readline(limit)
        cap = self.head_left + 1 if limit is None or limit < 0 else min(limit, self.head_left + 1)
        line = self.buffered.readline(cap)
        self.head_left -= len(line)
        self.lines_left -= 1
        if self.head_left < 0 or self.lines_left < 0:
            raise HeadTooLarge()
        return line

    def read(self, n=-1):
        return self.buffered.read(n)

    def close(self):
        self.buffered.close()

# -----------------------------------------------------------------------------
# the handler: JSON errors, the request's reading, the key

class JsonHandler(BaseHTTPRequestHandler):
    """A request handler whose every answer is JSON (or a page), read safely; subclasses add do_GET, do_POST."""
    protocol_version = "HTTP/1.1"  # keep-alive; streams use chunked transfer encoding
    default_request_version = "HTTP/1.1"  # errors before the version is known still get a status line
    server_version = "nanochat"

    def version_string(self):
        return self.server_version  # not the Python version

    def setup(self):
        self.timeout = self.server.limits.write_timeout
        super().setup()
        self.rfile.close()  # the standard buffered reader, replaced by one with a deadline and bounds
        self.rfile = RequestReader(self.connection)

    def log_message(self, format, *args):
        if not self.server.quiet:
            super().log_message(format, *args)

    def handle(self):
        self.error_sent = False
        super().handle()
        if self.error_sent:
            self._linger()

    def _linger(self):
        """After an error the client may still be sending (a body not read, a slow request): end the answer, then
        read and drop what comes for a moment, so that closing does not reset the connection before the client reads it."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline, dropped = time.monotonic() + 1.0, 0
            while dropped < (1 << 20) and (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                data = self.connection.recv(1 << 16)
                if not data:
                    break
                dropped += len(data)
        except OSError:
            pass

    def handle_one_request(self):
        limits = self.server.limits
        self.rfile.begin(time.monotonic() + limits.request_timeout, limits.max_header_bytes, limits.max_headers)
        self.answered, self.command, self.request_version = False, None, self.default_request_version
        self.raw_requestline, self.requestline = b"", ""
        try:
            self.raw_requestline = self.rfile.readline()
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                if not self.answered:  # a blank request line: parse_request says nothing
                    self.send_error(400, "Bad request: an empty request line")
                return
            self.rfile.end_head()
            self.connection.settimeout(limits.write_timeout)
            if len(self.requestline.split()) != 3:
                return self.send_error(400, "Bad request: HTTP/0.9 is not spoken here; send METHOD PATH HTTP/1.1")
            if self.headers.defects or self.headers.get_payload():  # a line that is no "Name: value" ends the parse early
                return self.send_error(400, "Bad request: a malformed header line")
            getattr(self, "do_" + self.command, self.not_allowed)()
            self.wfile.flush()
        except HeadTooLarge:
            if not self.raw_requestline:
                self.send_error(414, f"the request line is over {limits.max_header_bytes} bytes")
            else:
                self.send_error(431, f"the request line and headers are over {limits.max_header_bytes} bytes "
                                     f"or {limits.max_headers} headers")
        except TooSlow:
            if self.rfile.raw.received:  # a request began but did not arrive in time; an idle connection just closes
                self.send_error(408, f"the request did not arrive within {limits.request_timeout:g} s")
            self.close_connection = True
        except OSError:  # the client went away, or stalled a write
            self.close_connection = True

    def send_response(self, code, message=None):
        self.answered = True
        super().send_response(code, message)

    def send_error(self, code, message=None, explain=None):
        """The base class's errors (bad request line, headers too long, ...) as JSON too; the connection then closes."""
        self.close_connection = True
        if code == 505:  # HTTP/2 and later: not the server's fault
            code, message = 400, f"Bad request: {message}; send HTTP/1.1"
        try:
            self.send_api_error(ApiError(code, message or HTTPStatus(code).phrase))
        except OSError:
            pass

    def not_allowed(self):
        self.close_connection = True  # a body, if any, is not read
        allowed = ", ".join(m[3:] for m in dir(self) if m.startswith("do_"))
        self.send_api_error(ApiError(405, f"method {self.command[:20]!r} is not allowed here", code="method_not_allowed",
                                     headers=[("Allow", allowed)]))

    # --- answers

    def send_body(self, status, body, content_type, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in headers:
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status, obj, headers=()):
        self.send_body(status, json.dumps(obj).encode(), "application/json", headers)

    def send_api_error(self, e):
        self.error_sent = True
        self.send_json(e.status, e.body(), e.headers)

    # --- checks

    def authorized(self):
        key = self.server.api_key
        return key is None or key.matches(self.headers.get("Authorization"))

    def unauthorized(self):
        """The 401 for a request without the key (a browser shows its login box: the key is the password)."""
        given = bool(self.headers.get("Authorization"))
        self.close_connection = True  # a body, if any, is not read
        return ApiError(401, "wrong API key" if given else "this server needs its API key: send Authorization: Bearer <key> "
                             "(a browser asks for it: any user name, the key as the password)", code="invalid_api_key",
                        headers=[("WWW-Authenticate", 'Basic realm="nanochat", charset="UTF-8"')])

    def host_ok(self):
        """On a loopback address, answer only requests for a loopback host name (no DNS rebinding)."""
        if not is_loopback(self.server.server_address[0]):
            return True
        host = (self.headers.get("Host") or "").strip()
        host = host[1:].split("]")[0] if host.startswith("[") else host.rsplit(":", 1)[0]
        if is_loopback(host):
            return True
        self.close_connection = True
        self.send_api_error(ApiError(403, f"this server answers only requests for 127.0.0.1 or localhost, not {host[:100]!r}",
                                     code="forbidden_host"))
        return False

    def read_body(self):
        """The request's body, by its Content-Length, within the size limit and the request's deadline."""
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ApiError(411, "send the body with a Content-Length, not chunked", "Content-Length")
        if len(lengths) != 1 or not (lengths[0].strip().isascii() and lengths[0].strip().isdigit()):
            self.close_connection = True
            raise ApiError(411, "one Content-Length header with a number of bytes is required", "Content-Length")
        length, limit = int(lengths[0]), self.server.limits.max_body_bytes
        if length > limit:
            self.close_connection = True  # the body is not read: this connection cannot go on
            raise ApiError(413, f"the request body is {length} bytes, more than the limit of {limit}", code="body_too_large")
        try:
            raw = self.rfile.read(length)
        except TooSlow:
            self.close_connection = True
            raise ApiError(408, f"the request did not arrive within {self.server.limits.request_timeout:g} s",
                           code="request_timeout") from None
        if len(raw) < length:
            self.close_connection = True
            raise ApiError(400, f"the body ended after {len(raw)} of its {length} bytes", "Content-Length")
        self.rfile.end(self.server.limits.write_timeout)
        return raw

    def read_json(self):
        raw = self.read_body()
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            # also keeps other web sites out: a browser asks before a cross-site JSON POST, and no one answers it
            raise ApiError(415, f"send JSON with Content-Type: application/json (got {content_type[:100] or 'none'!r})",
                           "Content-Type")
        def no_constants(c):
            raise ValueError(f"{c} is not valid JSON")
        try:
            return json.loads(raw.decode("utf-8"), parse_constant=no_constants)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {str(e)[:200]}", code="invalid_json") from None

    def client_gone(self):
        """True when the client closed its side (or the server is stopping); asked between tokens."""
        if self.server.stopping.is_set():
            return True
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

# -----------------------------------------------------------------------------
# the server: the key's rule, connection limits, stopping

class GuardedServer(ThreadingHTTPServer):
    """
    A threading HTTP server that bounds its connections (in all and per client address), counts
    what happened, and stops cleanly. Without an API key it listens only on a loopback address,
    unless allow_no_auth says so on purpose.
    """
    daemon_threads = False  # so that server_close() joins them (close() first makes them end)
    block_on_close = True
    request_queue_size = 128  # connections the kernel holds before accept() (the default 5 drops a burst of clients)

    def __init__(self, address, handler, limits=None, api_key=None, allow_no_auth=False, quiet=False):
        check_exposure(address[0], api_key, allow_no_auth)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.api_key = ApiKey(api_key) if api_key is not None else None
        self.limits = limits or Limits()
        self.quiet = quiet
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.stats = Counter(completed=0, disconnected=0, errors=0, internal_errors=0, refused_connections=0)
        self.connections = {}  # socket -> client address
        self.per_client = Counter()
        super().__init__(address, handler)

    @property
    def url(self):
        host, port = self.server_address[:2]
        host = "127.0.0.1" if host == "0.0.0.0" else "[::1]" if host == "::" else f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"

    def count(self, name):
        with self.lock:
            self.stats[name] += 1

    def connection_state(self):
        with self.lock:
            return {"connections": len(self.connections), "connection_clients": len(self.per_client)}

    def process_request(self, request, client_address):
        """Give the connection a thread, or answer it at once when there are too many (in all, or from its address)."""
        client = client_address[0]
        with self.lock:
            if len(self.connections) >= self.limits.max_connections:
                refuse = ApiError(503, f"server busy: {len(self.connections)} connections are open", code="too_many_connections")
            elif self.per_client[client] >= self.limits.max_connections_per_client:
                refuse = ApiError(429, f"this client has {self.per_client[client]} connections open already, "
                                       f"the most one client may", code="too_many_connections")
            else:
                refuse = None
                self.connections[request] = client
                self.per_client[client] += 1
        if refuse is not None:
            self.count("refused_connections")
            return self._refuse(request, refuse)
        try:
            super().process_request(request, client_address)
        except Exception:
            self._forget(request)
            raise

    def _refuse(self, request, error):
        body = json.dumps(error.body()).encode()
        head = f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\nContent-Type: application/json\r\n" \
               f"Content-Length: {len(body)}\r\nRetry-After: 5\r\nConnection: close\r\n\r\n"
        try:
            request.setblocking(False)  # a fresh connection's buffer takes it at once; the accept loop never waits
            request.send(head.encode() + body)
        except OSError:
            pass
        self.shutdown_request(request)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def _forget(self, request):
        with self.lock:
            client = self.connections.pop(request, None)
            if client is not None:
                self.per_client[client] -= 1
                if self.per_client[client] <= 0:
                    del self.per_client[client]

    def handle_error(self, request, client_address):
        """An exception out of a handler (a bug): counted, and its traceback to the log."""
        self.count("internal_errors")
        traceback.print_exc()

    def close(self):
        """Stop everything: generations end at their next token, open connections are cut, threads joined.
        (Call shutdown() first when serve_forever() runs in another thread.)"""
        self.stopping.set()
        with self.lock:
            conns = list(self.connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.server_close()
