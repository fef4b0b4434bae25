"""A client for HAProxy's runtime API (the ``stats socket``), over unix or TCP.

Commands are pipelined in the CLI's interactive ("prompt") mode: one connection, any
number of commands, and each reply is delimited by the prompt, so every reply can be
matched to the command that produced it. That keeps a 1,000-server update to one
round trip while still checking every single reply. ``send_many`` splits the round
trip: commands sent to several HAProxy processes first, their replies read after,
so that the processes work on them at the same time.
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from veloflux.errors import VelofluxError

# HAProxy's server weights are 0..256 (``set server <b>/<s> weight <n>``).
HAPROXY_MAX_WEIGHT = 256
_PROMPT = "\n> "
_RECV_BYTES = 1 << 16
_BULK_BYTES = 1 << 22


def parse_socket_address(address: str) -> tuple[Literal["unix", "tcp"], str, int]:
    """Split ``unix:///path`` or ``tcp://host:port``; raise ``ValueError`` if malformed."""
    if address.startswith("unix://"):
        path = address[len("unix://") :]
        if not path.startswith("/"):
            raise ValueError(
                "unix socket path must be absolute, e.g. unix:///run/haproxy/admin.sock"
            )
        return "unix", path, 0
    if address.startswith("tcp://"):
        host, sep, port_text = address[len("tcp://") :].rpartition(":")
        host = host.strip("[]")
        if (
            not sep
            or not host
            or not (port_text.isascii() and port_text.isdigit())
            or not 0 < int(port_text) < 65536
        ):
            raise ValueError("tcp address must be tcp://HOST:PORT with a port in 1..65535")
        return "tcp", host, int(port_text)
    raise ValueError("must start with unix:// or tcp://")


class RuntimeAPIError(VelofluxError):
    """The runtime API could not be reached, or its answer was cut short."""


def _explain(exc: OSError) -> str:
    reasons = {
        errno.ENOENT: "no such socket file (is HAProxy running, and is 'stats socket' set?)",
        errno.ECONNREFUSED: "connection refused (nothing listening)",
        errno.EACCES: "permission denied (check the socket's mode and owner)",
        errno.EPERM: "permission denied",
    }
    return reasons.get(exc.errno or 0, exc.strerror or str(exc))


@dataclass(frozen=True)
class RuntimeAPI:
    """One HAProxy runtime API endpoint: ``unix:///path`` or ``tcp://host:port``."""

    address: str
    timeout_seconds: float = 2.0

    def run(self, command: str) -> str:
        """Run one command and return its reply without the trailing blank line."""
        return self.run_many([command])[0]

    def run_many(self, commands: Sequence[str]) -> list[str]:
        """Run commands in order on one connection; one reply per command.

        Raises ``RuntimeAPIError`` if the socket cannot be reached, times out, or the
        connection closes before every reply has arrived.
        """
        return self._send(commands).wait()

    def send_many(self, commands: Sequence[str]) -> PendingReplies:
        """``run_many`` in two halves: the commands are sent now, the replies read by
        ``PendingReplies.wait``. Several HAProxy processes asked this way before any of
        their replies is read work on them at the same time, while this process reads
        the first. Errors, even a refused connection, are raised by ``wait``, so that
        they come in the order the replies are read.

        A subclass that answers ``run_many`` itself (the tests' stubs, a wrapper that
        edits replies) is asked through it, when the replies are waited for.
        """
        if type(self).run_many is not RuntimeAPI.run_many:
            return PendingReplies(self, len(commands), answer=lambda: self.run_many(commands))
        return self._send(commands)

    def _send(self, commands: Sequence[str]) -> PendingReplies:
        try:
            payload = _payload(commands)
            deadline = time.monotonic() + self.timeout_seconds
            sock = self._connect()
        except RuntimeAPIError as exc:
            return PendingReplies(self, len(commands), error=exc)
        try:
            chunks, closed = self._write(sock, payload, deadline)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, RuntimeAPIError):
                return PendingReplies(self, len(commands), error=exc)
            raise
        return PendingReplies(self, len(commands), _Sent(sock, chunks, closed, deadline))

    def _split(self, raw: bytes, count: int) -> list[str]:
        """The replies in ``raw``, one per command, each without its trailing newlines."""
        text = raw.decode("utf-8", errors="replace")
        pieces = text.split(_PROMPT)
        # pieces: the reply to "prompt", one per command, then what follows "quit" ("").
        replies = pieces[1 : 1 + count]
        if len(pieces) < count + 2:
            raise RuntimeAPIError(
                f"{self.address}: connection closed after {max(len(pieces) - 2, 0)} of "
                f"{count} replies"
            )
        return [r.rstrip("\n") for r in replies]

    def _connect(self) -> socket.socket:
        kind, where, port = parse_socket_address(self.address)
        if kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            target: str | tuple[str, int] = where
        else:
            family = socket.AF_INET6 if ":" in where else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            target = (where, port)
        sock.settimeout(self.timeout_seconds)
        try:
            sock.connect(target)
        except TimeoutError as exc:
            sock.close()
            raise RuntimeAPIError(f"{self.address}: connect timed out") from exc
        except OSError as exc:
            sock.close()
            raise RuntimeAPIError(f"{self.address}: {_explain(exc)}") from exc
        return sock

    def _write(
        self, sock: socket.socket, payload: bytes, deadline: float
    ) -> tuple[list[bytes], bool]:
        """Write ``payload``, reading replies meanwhile; the bytes read, and whether the
        server closed the connection already.

        Writing and reading are interleaved so that a large reply cannot fill the
        buffers and stall a large request (and the other way round). Once everything is
        written, the rest is read in bulk (``_drain``), when the replies are wanted.
        """
        sock.setblocking(False)
        chunks: list[bytes] = []
        view = memoryview(payload)
        try:  # a few commands fit the socket's buffer: sent without a selector
            view = view[sock.send(view) :]
        except BlockingIOError:
            pass
        except (BrokenPipeError, ConnectionResetError):
            view = view[:0]
        if not view:
            return chunks, False
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            while view:
                for _key, mask in sel.select(self._remaining(deadline)):
                    if mask & selectors.EVENT_WRITE:
                        try:
                            view = view[sock.send(view) :]
                        except (BrokenPipeError, ConnectionResetError):
                            view = view[:0]
                    if mask & selectors.EVENT_READ:
                        try:
                            chunk = sock.recv(_RECV_BYTES)
                        except ConnectionResetError:
                            chunk = b""
                        if not chunk:
                            return chunks, True
                        chunks.append(chunk)
        return chunks, False

    def _drain(self, sock: socket.socket, chunks: list[bytes], deadline: float) -> bytes:
        """Read until the server closes (it does after ``quit``), in few large reads.

        HAProxy writes each command's reply as it goes; woken for every one, a reader
        pays a wake-up and a system call per command (a thousand for a 1,000-server
        update) to read bytes that are all coming anyway. So the socket blocks in the
        kernel until a large read is full or the connection closes (``MSG_WAITALL``),
        bounded by the deadline through ``SO_RCVTIMEO``.
        """
        sock.setblocking(True)
        while True:
            remaining = self._remaining(deadline)
            seconds = int(remaining)
            micros = max(1, int((remaining - seconds) * 1e6)) if seconds == 0 else 0
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", seconds, micros)
            )
            try:
                chunk = sock.recv(_BULK_BYTES, socket.MSG_WAITALL)
            except BlockingIOError:  # the timer ran out with nothing read
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def _remaining(self, deadline: float) -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeAPIError(
                f"{self.address}: no complete answer within {self.timeout_seconds:g}s"
            )
        return remaining


def _payload(commands: Sequence[str]) -> bytes:
    """The bytes that run ``commands`` in prompt mode, then quit; refuses a command that
    would be read as two (a line break) or that is not ASCII."""
    for command in commands:
        if "\n" in command or "\r" in command:
            raise RuntimeAPIError(f"refusing a command with a line break: {command!r}")
    payload = "prompt\n" + "".join(f"{c}\n" for c in commands) + "quit\n"
    try:
        return payload.encode("ascii")
    except UnicodeEncodeError as exc:
        raise RuntimeAPIError(
            f"refusing a command that is not ASCII: {exc.object[exc.start : exc.end]!r}"
        ) from None


@dataclass
class _Sent:
    """A connection whose commands are all written: what was read meanwhile, whether
    the server already closed it, and when its time runs out."""

    sock: socket.socket
    chunks: list[bytes]
    closed: bool
    deadline: float


class PendingReplies:
    """Commands sent to one runtime API whose replies are still to be read (``wait``).

    Holds the open connection in between; ``wait`` reads to the end and closes it, as
    ``close`` does for replies no longer wanted. The timeout counts from the sending.
    """

    def __init__(
        self,
        api: RuntimeAPI,
        count: int,
        sent: _Sent | None = None,
        error: RuntimeAPIError | None = None,
        answer: Callable[[], list[str]] | None = None,
    ) -> None:
        self._api, self._count = api, count
        self._sent, self._error, self._answer = sent, error, answer

    def wait(self) -> list[str]:
        """The replies, one per command; raises ``RuntimeAPIError`` as ``run_many`` does."""
        if self._answer is not None:
            return self._answer()
        sent, self._sent = self._sent, None
        if sent is None:
            raise self._error or RuntimeAPIError(f"{self._api.address}: replies already read")
        with sent.sock:
            if sent.closed:
                raw = b"".join(sent.chunks)
            else:
                raw = self._api._drain(sent.sock, sent.chunks, sent.deadline)
        return self._api._split(raw, self._count)

    def pump(self) -> None:
        """Take in what has arrived so far, without waiting. HAProxy writes a reply only
        as fast as it is read (a socket buffer holds ~200 kB; a 1,000-server ``show
        stat`` is more): replies left waiting while another replica's are parsed are
        pumped first, so that their HAProxy can finish them meanwhile."""
        sent = self._sent
        while sent is not None and not sent.closed:
            try:
                chunk = sent.sock.recv(_BULK_BYTES)  # non-blocking since _write
            except BlockingIOError:
                return
            except ConnectionResetError:
                chunk = b""
            if chunk:
                sent.chunks.append(chunk)
            else:
                sent.closed = True

    def close(self) -> None:
        """Drop the replies unread: the connection is closed."""
        sent, self._sent = self._sent, None
        if sent is not None:
            sent.sock.close()
