"""A deterministic HTTP/1.1 fault proxy on 127.0.0.1 in front of an S3 endpoint.

:func:`fault_proxy` runs it in threads of the test process and yields a :class:`FaultProxy`
whose ``endpoint`` is the upstream's with the proxy's URL. Requests pass through byte for byte
(the client's Host header included, so SigV4 signatures made for the proxy's URL verify
upstream), over kept-alive connections, with bodies streamed in 64 KiB pieces whether framed
by Content-Length or ``Transfer-Encoding: chunked`` (an ``aws-chunked`` body is one of those);
only an ``Expect: 100-continue`` is answered by the proxy itself and not passed on (botocore
leaves ``expect`` out of the signature).

Faults, decided per request, in the order requests reach the proxy:

- :meth:`FaultProxy.ghost`: forward it, read the upstream's whole answer, then close the
  client's connection without answering: the write landed, the client sees a lost response;
- :meth:`FaultProxy.reset`: reset the client's connection before forwarding anything:
  nothing landed;
- :meth:`FaultProxy.hold`: read the whole request (answering an ``Expect: 100-continue``
  so that its body comes), forward nothing yet, set :attr:`Hold.arrived`, and wait until
  the test calls :meth:`Hold.release` with what to do then (forward, ghost or reset). A
  client killed once the hold has arrived has sent everything: a forwarded request is
  whole, however late its sender was killed;
- :meth:`FaultProxy.chaos`: each matching request ghosted or reset with given
  probabilities, drawn from ``random.Random(seed)``, so the sequence of decisions repeats
  (which request gets which decision follows the order requests arrive in, which only a
  single client fixes).

A rule picks requests by index (0-based, over every request the proxy received), by a
predicate on (method, path, query) (:func:`mutating`, :func:`put_object`,
:func:`upload_part`, :func:`create_upload`, :func:`complete_upload`,
:func:`delete_object`, or any function of the three), or both; it skips the first *skip*
requests it matches and applies to the next *times* (None: all of them). The first rule that
applies wins; requests no rule takes are forwarded. :attr:`FaultProxy.log` records every
request with its upstream status and the action taken; on leaving the context, a rule that
applied fewer times than it was told raises :class:`UnappliedRule`, so a fault that
silently did not happen fails the test that asked for it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import random
import select
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import urlsplit

from tests.harness.s3servers import Endpoint

Action = Literal["forward", "ghost", "reset"]
Match = Callable[[str, str, str], bool]
CHUNK = 64 << 10
# Bounds that only turn a hang into a failure.
HOLD_TIMEOUT = 300.0
SOCKET_TIMEOUT = 300.0
_LINGER_0 = (1).to_bytes(4, "little") + (0).to_bytes(4, "little")  # struct linger {1, 0}

MUTATING = frozenset({"PUT", "POST", "DELETE"})


def mutating(method: str, path: str, query: str) -> bool:
    """Whether a request may change the store (PUT, POST, DELETE)."""
    return method in MUTATING


def _params(query: str) -> set[str]:
    return {item.partition("=")[0] for item in query.split("&") if item}


def put_object(method: str, path: str, query: str) -> bool:
    """A whole-object PUT (not a part, not a copy's part)."""
    return method == "PUT" and "uploadId" not in _params(query) and path.count("/") >= 2


def upload_part(method: str, path: str, query: str) -> bool:
    """A multipart upload's part."""
    return method == "PUT" and {"uploadId", "partNumber"} <= _params(query)


def create_upload(method: str, path: str, query: str) -> bool:
    """CreateMultipartUpload (``POST ?uploads``)."""
    return method == "POST" and "uploads" in _params(query)


def complete_upload(method: str, path: str, query: str) -> bool:
    """CompleteMultipartUpload (``POST ?uploadId=``)."""
    return method == "POST" and "uploadId" in _params(query)


def delete_object(method: str, path: str, query: str) -> bool:
    """DeleteObject or AbortMultipartUpload (a DELETE)."""
    return method == "DELETE"


class UnappliedRule(AssertionError):
    """A rule applied fewer times than it was told to: the fault the test relies on did not
    happen."""


@dataclass(frozen=True)
class Exchange:
    """One request seen by the proxy.

    *status* is the upstream's status code (None if the request was never answered
    upstream: reset, or the connection failed); *action* is what the client got:
    ``forward`` (the answer), ``ghost`` (no answer after the upstream's) or ``reset``;
    *held* tells that a :class:`Hold` stopped it first.
    """

    index: int
    method: str
    path: str
    query: str
    status: int | None
    action: Action
    held: bool = False


@dataclass
class Rule:
    """Which requests to treat how; see the module's docstring. *applied* counts the
    requests it took."""

    action: Action | Literal["hold"]
    index: int | None = None
    match: Match | None = None
    skip: int = 0
    times: int | None = 1
    matched: int = 0
    applied: int = 0

    def _take(self, index: int, method: str, path: str, query: str) -> bool:
        if self.index is not None and index != self.index:
            return False
        if self.match is not None and not self.match(method, path, query):
            return False
        self.matched += 1
        if self.matched <= self.skip:
            return False
        if self.times is not None and self.applied >= self.times:
            return False
        self.applied += 1
        return True


@dataclass
class Hold(Rule):
    """A rule that stops a request before it is forwarded: :attr:`arrived` is set when the
    whole request, head and body, is at the proxy; :meth:`release` lets it go on as told.
    Unreleased when the proxy stops, it is released as a reset."""

    arrived: threading.Event = field(default_factory=threading.Event)
    then: Action = "forward"
    _released: threading.Event = field(default_factory=threading.Event)

    def release(self, then: Action = "forward") -> None:
        """Let the held request (and any later one this rule takes) go on: *then* is
        ``forward``, ``ghost`` or ``reset``."""
        self.then = then
        self._released.set()

    def wait(self, timeout: float = HOLD_TIMEOUT) -> None:
        """Wait until the request has arrived; AssertionError if it does not in *timeout*."""
        if not self.arrived.wait(timeout):
            raise AssertionError(f"no request reached the hold {self} in {timeout} s")


@dataclass
class Chaos:
    """Random faults on matching requests, from ``random.Random(seed)``."""

    seed: int
    ghost: float
    reset: float
    match: Match
    rng: random.Random = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def decide(self) -> Action:
        draw = self.rng.random()
        if draw < self.ghost:
            return "ghost"
        if draw < self.ghost + self.reset:
            return "reset"
        return "forward"


class _Lost(Exception):
    """A connection closed or failed mid-exchange."""


class FaultProxy:
    """The running proxy: ``endpoint`` to hand to clients, rules to add, ``log`` to read."""

    def __init__(self, upstream: Endpoint) -> None:
        up = urlsplit(upstream.url)
        if up.scheme != "http" or up.hostname is None or up.port is None:
            raise ValueError(f"the proxy forwards plain http://host:port only, not {upstream.url}")
        self.upstream = upstream
        self._up_addr = (up.hostname, up.port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        self.endpoint = dataclasses.replace(
            upstream, name=f"{upstream.name}+proxy", url=f"http://127.0.0.1:{port}"
        )
        self.log: list[Exchange] = []
        self.rules: list[Rule] = []
        self.chaos_rule: Chaos | None = None
        self._lock = threading.Lock()
        self._count = 0
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._closing = False
        self.errors: list[BaseException] = []

    # ---------------------------------------------------------------- rules

    def ghost(
        self, *, index: int | None = None, match: Match | None = None, skip: int = 0,
        times: int | None = 1,
    ) -> Rule:  # fmt: skip
        """Answer the chosen requests' upstream writes with a lost response."""
        return self._add(Rule("ghost", index, match, skip, times))

    def reset(
        self, *, index: int | None = None, match: Match | None = None, skip: int = 0,
        times: int | None = 1,
    ) -> Rule:  # fmt: skip
        """Reset the client's connection before the chosen requests are forwarded."""
        return self._add(Rule("reset", index, match, skip, times))

    def hold(
        self, *, index: int | None = None, match: Match | None = None, skip: int = 0,
        times: int | None = 1,
    ) -> Hold:  # fmt: skip
        """Stop the chosen requests until the returned :class:`Hold` is released."""
        rule = Hold("hold", index, match, skip, times)
        self._add(rule)
        return rule

    def chaos(
        self, seed: int, *, ghost: float = 0.0, reset: float = 0.0, match: Match = mutating
    ) -> None:
        """Ghost or reset each matching request (mutating ones by default) that no rule
        takes, with these probabilities, drawn in arrival order from ``Random(seed)``."""
        if ghost < 0 or reset < 0 or ghost + reset > 1:
            raise ValueError(f"probabilities must be >= 0 and sum to <= 1: {ghost}, {reset}")
        with self._lock:
            self.chaos_rule = Chaos(seed, ghost, reset, match)

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def _decide(self, method: str, path: str, query: str) -> tuple[int, Rule | None, Action]:
        with self._lock:
            index = self._count
            self._count += 1
            for rule in self.rules:
                if rule._take(index, method, path, query):
                    return index, rule, rule.action if rule.action != "hold" else "forward"
            if self.chaos_rule is not None and self.chaos_rule.match(method, path, query):
                return index, None, self.chaos_rule.decide()
            return index, None, "forward"

    def _record(self, exchange: Exchange) -> None:
        with self._lock:
            self.log.append(exchange)

    # ---------------------------------------------------------------- running

    def start(self) -> None:
        self._spawn(self._accept_loop)

    def stop(self) -> None:
        """Stop accepting, release holds (as resets), close every connection, join threads."""
        with self._lock:
            self._closing = True
            holds = [r for r in self.rules if isinstance(r, Hold)]
        for h in holds:
            if not h._released.is_set():
                h.release("reset")
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(SOCKET_TIMEOUT)

    def check_applied(self) -> None:
        """Raise :class:`UnappliedRule` if a rule applied fewer times than told."""
        with self._lock:
            short = [r for r in self.rules if r.times is not None and r.applied < r.times]
        if short:
            raise UnappliedRule(
                "rules not applied as often as told (the fault did not happen): "
                + "; ".join(f"{r.action} applied {r.applied} of {r.times}: {r}" for r in short)
            )

    def _spawn(self, target: Callable[[], None]) -> None:
        t = threading.Thread(target=self._guard(target), daemon=True)
        self._threads.append(t)
        t.start()

    def _guard(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as e:
                if not self._closing:
                    self.errors.append(e)

        return run

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            if not self._track(conn):
                conn.close()
                return
            self._spawn(functools.partial(self._serve, conn))

    def _track(self, s: socket.socket) -> bool:
        with self._lock:
            if self._closing:
                return False
            self._sockets.add(s)
            return True

    def _untrack(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(s)
        s.close()

    def _serve(self, client: socket.socket) -> None:
        """Serve one client connection: its requests in turn, over one upstream connection."""
        client.settimeout(SOCKET_TIMEOUT)
        cin = client.makefile("rb")
        upstream: socket.socket | None = None
        uin: io.BufferedReader | None = None
        ending: Literal["keep", "close", "reset"] = "keep"
        try:
            while ending == "keep":
                head = _read_head(cin)
                if head is None:
                    break
                if upstream is not None and uin is not None and _closed_by_peer(upstream):
                    uin.close()
                    self._untrack(upstream)
                    upstream = None
                if upstream is None:
                    upstream = socket.create_connection(self._up_addr, timeout=SOCKET_TIMEOUT)
                    if not self._track(upstream):
                        upstream.close()
                        break
                    uin = upstream.makefile("rb")
                assert uin is not None
                ending = self._exchange(head, cin, client, upstream, uin)
        except (_Lost, OSError):
            pass
        finally:
            # A socket is closed only once its file objects are: close those first.
            if uin is not None:
                uin.close()
            if upstream is not None:
                self._untrack(upstream)
            cin.close()
            if ending == "reset":
                # Linger 0: a TCP reset, the client sees ECONNRESET rather than an EOF.
                with contextlib.suppress(OSError):
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_0)
            self._untrack(client)

    def _exchange(
        self,
        head: list[bytes],
        cin: io.BufferedReader,
        client: socket.socket,
        upstream: socket.socket,
        uin: io.BufferedReader,
    ) -> Literal["keep", "close", "reset"]:
        """Carry one request and its answer; say what becomes of the client connection."""
        method, target, _ = head[0].decode("latin-1").split(" ", 2)
        path, _, query = target.partition("?")
        headers = _headers(head)
        index, rule, action = self._decide(method, path, query)
        held = isinstance(rule, Hold)
        expects = headers.get("expect", "").lower() == "100-continue"
        body: _Buffer | None = None
        if isinstance(rule, Hold):
            # Read to the end before saying it arrived: a test that kills the sender then
            # knows the request is whole, however slowly a loaded machine sent it.
            if expects:
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = _Buffer()
            _copy_body(cin, body, headers, request=True)
            rule.arrived.set()
            action = rule.then if rule._released.wait(HOLD_TIMEOUT) else "reset"
        if action == "reset":
            self._record(Exchange(index, method, path, query, None, "reset", held))
            return "reset"
        status: int | None = None
        try:
            if expects and body is None:
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            upstream.sendall(b"".join(h for h in head if not h.lower().startswith(b"expect:")))
            # The upstream may answer early (a 412 before the body) and close: its answer,
            # if any, is still read below.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                if body is None:
                    _copy_body(cin, upstream, headers, request=True)
                else:
                    upstream.sendall(body.data())
            resp_head, resp_headers = _read_response_head(uin, client, action)
            status = int(resp_head.split(b" ", 2)[1])
            sink = client if action == "forward" else None
            if sink is not None:
                sink.sendall(resp_head)
            keep = _copy_response_body(uin, sink, resp_headers, method, status)
        finally:
            self._record(Exchange(index, method, path, query, status, action, held))
        if action == "ghost":
            return "close"
        closing = "close" in headers.get("connection", "").lower()
        return "keep" if keep and not closing else "close"


def _read_head(f: io.BufferedReader) -> list[bytes] | None:
    """The request or response head as raw lines (ending CRLF), None at a clean EOF."""
    lines: list[bytes] = []
    while True:
        line = f.readline(65536)
        if not line:
            if lines:
                raise _Lost("connection closed inside a message head")
            return None
        if not lines and line in (b"\r\n", b"\n"):
            continue  # tolerated before a request line (RFC 9112, 2.2)
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            return lines


def _headers(head: list[bytes]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in head[1:-1]:
        name, _, value = line.decode("latin-1").partition(":")
        key = name.strip().lower()
        out[key] = f"{out[key]}, {value.strip()}" if key in out else value.strip()
    return out


class _Sink(Protocol):
    def sendall(self, data: bytes, /) -> None: ...


class _Buffer:
    """A sink that keeps what it is sent: a held request's body, until it is forwarded."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []

    def sendall(self, data: bytes, /) -> None:
        self._pieces.append(bytes(data))

    def data(self) -> bytes:
        return b"".join(self._pieces)


def _copy_exact(src: io.BufferedReader, dst: _Sink | None, n: int) -> None:
    while n > 0:
        piece = src.read1(min(n, CHUNK))
        if not piece:
            raise _Lost(f"connection closed with {n} bytes of a body to come")
        if dst is not None:
            dst.sendall(piece)
        n -= len(piece)


def _copy_chunked(src: io.BufferedReader, dst: _Sink | None) -> None:
    """Copy a chunked body as it is (sizes, extensions and trailers included)."""
    while True:
        size_line = src.readline(65536)
        if not size_line:
            raise _Lost("connection closed inside a chunked body")
        if dst is not None:
            dst.sendall(size_line)
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:
                trailer = src.readline(65536)
                if not trailer:
                    raise _Lost("connection closed inside a chunked trailer")
                if dst is not None:
                    dst.sendall(trailer)
                if trailer in (b"\r\n", b"\n"):
                    return
        _copy_exact(src, dst, size + 2)  # the chunk and its CRLF


def _copy_body(
    src: io.BufferedReader, dst: _Sink | None, headers: dict[str, str], *, request: bool
) -> bool:
    """Copy a message body framed by its headers; False if it is delimited by the close of
    the connection (a response only), which then cannot carry another message."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        _copy_chunked(src, dst)
    elif "content-length" in headers:
        _copy_exact(src, dst, int(headers["content-length"]))
    elif not request:
        while piece := src.read1(CHUNK):
            if dst is not None:
                dst.sendall(piece)
        return False
    return True


def _read_response_head(
    uin: io.BufferedReader, client: socket.socket, action: Action
) -> tuple[bytes, dict[str, str]]:
    """The final response head; interim 1xx answers are passed on (or dropped unless the
    client is to be answered)."""
    while True:
        head = _read_head(uin)
        if head is None:
            raise _Lost("upstream closed without answering")
        status = int(head[0].split(b" ", 2)[1])
        if 100 <= status < 200 and status != 101:
            if action == "forward" and status != 100:
                client.sendall(b"".join(head))
            continue
        return b"".join(head), _headers(head)


def _copy_response_body(
    uin: io.BufferedReader,
    sink: socket.socket | None,
    headers: dict[str, str],
    method: str,
    status: int,
) -> bool:
    if method == "HEAD" or status in (204, 304):
        return True
    return _copy_body(uin, sink, headers, request=False)


def _closed_by_peer(s: socket.socket) -> bool:
    """Whether an idle kept-alive connection was closed by its peer (readable with nothing,
    or anything at all: an idle connection has nothing to say)."""
    readable, _, _ = select.select([s], [], [], 0)
    return bool(readable)


@contextlib.contextmanager
def fault_proxy(upstream: Endpoint, *, check: bool = True) -> Iterator[FaultProxy]:
    """Run a :class:`FaultProxy` in front of *upstream* for the block; add rules on it.

    On a normal exit, with *check*, :meth:`FaultProxy.check_applied` runs (a rule that did
    not apply as often as told fails the test), and an error inside the proxy's threads is
    raised.
    """
    proxy = FaultProxy(upstream)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
    if check:
        proxy.check_applied()
        if proxy.errors:
            raise AssertionError(f"the fault proxy failed: {proxy.errors!r}") from proxy.errors[0]
