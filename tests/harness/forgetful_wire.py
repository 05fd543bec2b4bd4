"""The wire between tests/harness/forgetful.py and its filesystem's process: pickled
messages, each after its length in 4 bytes, over a unix socket pair (the two ends are
this harness's own processes)."""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

__all__ = ["recv", "send"]


def send(sock: socket.socket, message: object) -> None:
    data = pickle.dumps(message)
    sock.sendall(struct.pack("!I", len(data)) + data)


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks = b""
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return chunks


def recv(sock: socket.socket) -> Any:
    head = _recv_exactly(sock, 4)
    if head is None:
        return None
    body = _recv_exactly(sock, struct.unpack("!I", head)[0])
    return None if body is None else pickle.loads(body)  # noqa: S301 -- our own child
