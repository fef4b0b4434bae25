"""RuntimeAPI against fake runtime sockets, for faults a real HAProxy cannot easily produce.

Each fake server runs in a thread on a temp unix socket (or loopback TCP port 0) and
speaks the CLI's prompt mode the way HAProxy 2.6 does: after ``prompt``, every reply is
followed by ``"\\n> "``, and ``quit`` closes the connection.
"""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from veloflux.haproxy.runtime import RuntimeAPI, RuntimeAPIError

HANG_GUARD_SECONDS = 5.0  # not a performance bound: only keeps a broken client from hanging
# No test here measures how long anything takes: each counts connections, commands and
# replies, and pytest-timeout (180 s a test) catches a client that hangs.

Handler = Callable[[socket.socket, "FakeServer"], None]


class FakeServer:
    """Accepts connections in a thread and hands each to ``handler``."""

    def __init__(self, handler: Handler, listener: socket.socket, address: str) -> None:
        self.handler = handler
        self.listener = listener
        self.address = address
        self.received: list[str] = []
        self.connections = 0
        self.ended = threading.Semaphore(0)  # released each time a connection is done
        self.stopping = threading.Event()
        self.errors: list[BaseException] = []
        listener.listen(8)
        listener.settimeout(0.05)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(HANG_GUARD_SECONDS)
                try:
                    self.handler(conn, self)
                except OSError:
                    pass  # the client went away: part of several scenarios
                except BaseException as exc:  # reported by the fixture
                    self.errors.append(exc)
            self.ended.release()

    def wait_until_connection_ended(self) -> None:
        """Block until a connection's handler has returned (pytest-timeout guards it)."""
        self.ended.acquire()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=HANG_GUARD_SECONDS)
        self.listener.close()
        assert not self.thread.is_alive(), "fake server thread did not stop"
        assert not self.errors, self.errors


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory short enough for AF_UNIX paths (108 bytes), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="vf-", dir="/tmp") as path:
        yield Path(path)


@pytest.fixture
def serve(short_dir: Path) -> Iterator[Callable[..., FakeServer]]:
    started: list[FakeServer] = []

    def start(handler: Handler, family: str = "unix") -> FakeServer:
        if family == "unix":
            path = short_dir / f"s{len(started)}.sock"
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(str(path))
            address = f"unix://{path}"
        else:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            address = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        server = FakeServer(handler, listener, address)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def lines_of(conn: socket.socket, server: FakeServer) -> Iterator[str]:
    """The command lines a client sends, recorded, up to and including ``quit``."""
    with conn.makefile("rb") as reader:
        for raw in reader:
            line = raw.decode("ascii").rstrip("\n")
            server.received.append(line)
            yield line
            if line == "quit":
                return


def prompt_mode(reply: Callable[[str], str], answer_only: int | None = None) -> Handler:
    """HAProxy's interactive mode; with ``answer_only``, close after that many replies."""

    def handle(conn: socket.socket, server: FakeServer) -> None:
        answered = 0
        prompting = False
        for line in lines_of(conn, server):
            if line == "quit":
                return
            if line == "prompt":
                prompting = True
                conn.sendall(b"\n> ")
                continue
            if answer_only is not None and answered >= answer_only:
                continue  # read the rest, answer nothing, then close at 'quit'
            text = reply(line) + ("\n> " if prompting else "\n")
            conn.sendall(text.encode("utf-8"))
            answered += 1

    return handle


WEIGHTS = {"get weight app/s1": "12 (initial 10)\n", "get weight app/s2": "3 (initial 3)\n"}


def haproxy_like(line: str) -> str:
    """Replies as HAProxy 2.6 gives them: text ending in a newline, or nothing."""
    if line.startswith("set server app/"):
        return ""
    if line.startswith("set server"):
        return "No such server.\n"
    return WEIGHTS.get(line, "Unknown command.\n")


def until_the_client_closes(conn: socket.socket, server: FakeServer) -> None:
    """Hold a connection open, answering nothing more, until the client closes it."""
    conn.settimeout(0.05)
    while not server.stopping.is_set():
        try:
            if not conn.recv(4096):
                return
        except TimeoutError:
            continue


# --- the normal conversation -----------------------------------------------------------


@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_one_reply_per_command_in_order(serve: Callable[..., FakeServer], family: str) -> None:
    server = serve(prompt_mode(haproxy_like), family=family)
    commands = [
        "get weight app/s1",
        "set server app/s1 weight 5",
        "set server nope/x weight 5",
        "get weight app/s2",
        "show nonsense",
    ]
    replies = RuntimeAPI(server.address, timeout_seconds=HANG_GUARD_SECONDS).run_many(commands)
    assert replies == [
        "12 (initial 10)",
        "",
        "No such server.",
        "3 (initial 3)",
        "Unknown command.",
    ]
    assert server.received == ["prompt", *commands, "quit"]
    assert server.connections == 1


def test_run_returns_the_single_reply(serve: Callable[..., FakeServer]) -> None:
    server = serve(prompt_mode(haproxy_like))
    assert (
        RuntimeAPI(server.address, timeout_seconds=HANG_GUARD_SECONDS).run("get weight app/s1")
        == "12 (initial 10)"
    )


def test_multi_line_replies_keep_their_inner_lines(serve: Callable[..., FakeServer]) -> None:
    info = "Name: HAProxy\nVersion: 2.6.12\nPid: 77\n"
    server = serve(prompt_mode(lambda line: info if line == "show info" else "admin\n"))
    api = RuntimeAPI(server.address, timeout_seconds=HANG_GUARD_SECONDS)
    assert api.run_many(["show info", "show cli level"]) == [info.rstrip("\n"), "admin"]


def test_no_commands_is_no_replies(serve: Callable[..., FakeServer]) -> None:
    server = serve(prompt_mode(haproxy_like))
    assert RuntimeAPI(server.address, timeout_seconds=HANG_GUARD_SECONDS).run_many([]) == []
    assert server.received == ["prompt", "quit"]


def test_large_reply_and_large_request_do_not_deadlock(serve: Callable[..., FakeServer]) -> None:
    # ~1 MB reply in the middle, and a request far larger than the socket buffers that the
    # server answers line by line with blocking writes: a client that wrote everything
    # before reading anything would deadlock here until its timeout.
    big = "".join(f"row {i:07d},UP,10\n" for i in range(60_000))  # ~1.1 MB
    assert len(big) > 1_000_000
    many = [f"get weight app/s{i}" for i in range(30_000)]

    def reply(line: str) -> str:
        if line == "show stat":
            return big
        return line.rsplit("s", 1)[1] + " (initial 1)\n"

    server = serve(prompt_mode(reply))
    commands = [*many[:10], "show stat", *many[10:]]
    api = RuntimeAPI(server.address, timeout_seconds=HANG_GUARD_SECONDS * 2)
    replies = api.run_many(commands)
    assert len(replies) == len(commands)
    assert replies[10] == big.rstrip("\n")
    assert replies[0] == "0 (initial 1)"
    assert replies[-1] == "29999 (initial 1)"
    assert replies[11:] == [f"{i} (initial 1)" for i in range(10, 30_000)]


# --- faults ----------------------------------------------------------------------------


def test_server_closing_after_half_the_replies(serve: Callable[..., FakeServer]) -> None:
    server = serve(prompt_mode(haproxy_like, answer_only=2))
    commands = ["get weight app/s1", "get weight app/s2", "get weight app/s1", "get weight app/s2"]
    with pytest.raises(RuntimeAPIError, match=r"closed after 2 of 4 replies") as caught:
        RuntimeAPI(server.address, timeout_seconds=HANG_GUARD_SECONDS).run_many(commands)
    assert server.address in str(caught.value)


def test_server_closing_mid_reply(serve: Callable[..., FakeServer]) -> None:
    def handle(conn: socket.socket, server: FakeServer) -> None:
        for line in lines_of(conn, server):
            if line == "prompt":
                conn.sendall(b"\n> ")
            elif line == "quit":
                return
            else:
                conn.sendall(b"Name: HAProxy\nPi")  # cut short, no prompt follows
                return

    server = serve(handle)
    with pytest.raises(RuntimeAPIError, match=r"closed after 0 of 1 replies"):
        RuntimeAPI(server.address, timeout_seconds=HANG_GUARD_SECONDS).run("show info")


def test_server_that_never_answers_times_out(serve: Callable[..., FakeServer]) -> None:
    """The client gives up at its own deadline with the timeout error, on the one
    connection that carried the whole request. Kills: a read with no deadline (a hang,
    which pytest-timeout reports) or a retry on a new connection."""

    def silent(conn: socket.socket, server: FakeServer) -> None:
        for _ in lines_of(conn, server):
            pass  # read and record every line, answer none
        until_the_client_closes(conn, server)

    server = serve(silent)
    with pytest.raises(RuntimeAPIError, match=r"no complete answer within 0\.3s$") as caught:
        RuntimeAPI(server.address, timeout_seconds=0.3).run_many(["show info"])
    assert str(caught.value).startswith(server.address)
    server.wait_until_connection_ended()
    assert server.received == ["prompt", "show info", "quit"]
    assert server.connections == 1


def test_server_that_answers_but_never_closes_times_out(
    serve: Callable[..., FakeServer],
) -> None:
    """Every reply arrived but the connection stays open: still the timeout error, not
    the replies. Kills: a drain that waits for the close with no deadline (a hang), or
    one that returns what it has when the deadline passes."""

    def never_closes(conn: socket.socket, server: FakeServer) -> None:
        for line in lines_of(conn, server):
            conn.sendall(b"\n> " if line in ("prompt", "quit") else b"ok\n\n> ")
        until_the_client_closes(conn, server)

    server = serve(never_closes)
    with pytest.raises(RuntimeAPIError, match=r"no complete answer within 0\.3s$"):
        RuntimeAPI(server.address, timeout_seconds=0.3).run_many(["show info"])
    server.wait_until_connection_ended()
    assert server.received == ["prompt", "show info", "quit"]
    assert server.connections == 1


def test_missing_socket_file(short_dir: Path) -> None:
    api = RuntimeAPI(f"unix://{short_dir}/absent.sock", timeout_seconds=0.3)
    with pytest.raises(RuntimeAPIError, match="no such socket"):
        api.run("show info")


def test_socket_file_with_no_listener(short_dir: Path) -> None:
    path = short_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound_only:
        bound_only.bind(str(path))  # the file exists, nobody listens on it
        api = RuntimeAPI(f"unix://{path}", timeout_seconds=0.3)
        with pytest.raises(RuntimeAPIError, match="refused"):
            api.run("show info")


def test_closed_tcp_port_is_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api = RuntimeAPI(f"tcp://127.0.0.1:{port}", timeout_seconds=0.3)
    with pytest.raises(RuntimeAPIError, match="refused"):
        api.run("show info")


@pytest.mark.parametrize(
    "command",
    ["show info\nshutdown sessions server app/s1", "get weight app/s1\r", "\n"],
)
def test_command_with_a_line_break_is_refused_before_connecting(
    serve: Callable[..., FakeServer], command: str
) -> None:
    server = serve(prompt_mode(haproxy_like))
    api = RuntimeAPI(server.address, timeout_seconds=HANG_GUARD_SECONDS)
    with pytest.raises(RuntimeAPIError, match="line break"):
        api.run_many(["get weight app/s1", command])
    assert server.connections == 0
    assert server.received == []


@pytest.mark.parametrize(
    ("name", "culprit"),
    [("sé", "é"), ("s\u200b1", "\u200b"), ("s1\u037e", "\u037e")],
    ids=["accent", "zero-width-space", "greek-question-mark"],
)
def test_non_ascii_command_is_refused_before_connecting(
    serve: Callable[..., FakeServer], name: str, culprit: str
) -> None:
    """The socket exists and answers, so only the ASCII check can refuse. Kills:
    removing it (the command travels as UTF-8), encoding with ``errors="replace"``
    (HAProxy would receive ``app/s?``), or letting ``UnicodeEncodeError`` escape."""
    server = serve(prompt_mode(haproxy_like))
    api = RuntimeAPI(server.address, timeout_seconds=HANG_GUARD_SECONDS)
    with pytest.raises(RuntimeAPIError, match="not ASCII") as caught:
        api.run_many(["get weight app/s1", f"get weight app/{name}"])
    assert str(caught.value) == f"refusing a command that is not ASCII: {culprit!r}"
    assert server.connections == 0
    assert server.received == []
    assert api.run("get weight app/s1") == "12 (initial 10)"  # the same socket answers
    assert server.connections == 1
