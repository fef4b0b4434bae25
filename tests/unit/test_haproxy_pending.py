"""``RuntimeAPI.send_many``: the commands sent now, the replies read later
(``PendingReplies``), as the replicas of one proxy are asked all at once. Against the
fake runtime sockets of test_runtime_api.py; no test here measures how long anything
takes."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.unit.test_runtime_api import (
    HANG_GUARD_SECONDS,
    FakeServer,
    Handler,
    haproxy_like,
    prompt_mode,
)
from veloflux.haproxy.runtime import RuntimeAPI, RuntimeAPIError

COMMANDS = ["get weight app/s1", "set server app/s1 weight 5", "get weight app/s2"]


@pytest.fixture
def sockets() -> Iterator[Path]:
    """A directory short enough for AF_UNIX paths (108 bytes), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="vf-", dir="/tmp") as path:
        yield Path(path)


@pytest.fixture
def serve(sockets: Path) -> Iterator[Callable[[Handler], FakeServer]]:
    """Fake runtime sockets (unix), each answering with ``handler``."""
    started: list[FakeServer] = []

    def start(handler: Handler) -> FakeServer:
        path = sockets / f"s{len(started)}.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        started.append(FakeServer(handler, listener, f"unix://{path}"))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def test_every_server_has_its_commands_before_any_reply_is_read(
    serve: Callable[[Handler], FakeServer],
) -> None:
    """Kills: a send that waits for its replies, so that the second HAProxy starts on its
    answer only once the first one's is read."""
    servers = [serve(prompt_mode(haproxy_like)) for _ in range(2)]
    pending = [
        RuntimeAPI(s.address, timeout_seconds=HANG_GUARD_SECONDS).send_many(COMMANDS)
        for s in servers
    ]
    for server in servers:  # each has answered everything, 'quit' included, unread
        server.wait_until_connection_ended()
        assert server.received == ["prompt", *COMMANDS, "quit"]
    expected = ["12 (initial 10)", "", "3 (initial 3)"]
    assert [p.wait() for p in pending] == [expected, expected]


def test_pumping_takes_in_a_reply_larger_than_the_socket_buffers(
    serve: Callable[[Handler], FakeServer],
) -> None:
    """Kills: a pump that reads nothing, or loses what it read, so that a server whose
    reply outgrows the buffers never finishes it while another reply is parsed."""
    big = "".join(f"row {i:07d},UP,10\n" for i in range(60_000))  # ~1.1 MB
    server = serve(prompt_mode(lambda line: big if line == "show stat" else "admin\n"))
    api = RuntimeAPI(server.address, timeout_seconds=HANG_GUARD_SECONDS * 2)
    pending = api.send_many(["show cli level", "show stat"])
    while not server.ended.acquire(timeout=0.01):  # the server is done only once read
        pending.pump()
    assert pending.wait() == ["admin", big.rstrip("\n")]


def test_a_refused_connection_is_raised_when_the_replies_are_read(sockets: Path) -> None:
    """Kills: a failed send raising at once (out of the order in which the replicas' errors
    are counted) or with another message than ``run_many``'s."""
    api = RuntimeAPI(f"unix://{sockets}/none.sock", timeout_seconds=HANG_GUARD_SECONDS)
    pending = api.send_many(COMMANDS)
    with pytest.raises(RuntimeAPIError) as sent:
        pending.wait()
    with pytest.raises(RuntimeAPIError) as ran:
        api.run_many(COMMANDS)
    assert str(sent.value) == str(ran.value)


def test_replies_dropped_unread_are_not_read_later(serve: Callable[[Handler], FakeServer]) -> None:
    server = serve(prompt_mode(haproxy_like))
    pending = RuntimeAPI(server.address, timeout_seconds=HANG_GUARD_SECONDS).send_many(COMMANDS)
    pending.close()
    server.wait_until_connection_ended()
    with pytest.raises(RuntimeAPIError, match="already read"):
        pending.wait()


@dataclass(frozen=True)
class Answering(RuntimeAPI):
    """A runtime API that answers ``run_many`` itself, as the tests' stubs do."""

    asked: list[list[str]] = field(default_factory=list)

    def run_many(self, commands: Sequence[str]) -> list[str]:
        self.asked.append(list(commands))
        return ["ok"] * len(commands)


def test_an_api_that_answers_run_many_itself_is_asked_when_the_replies_are_read() -> None:
    """Kills: send_many going to a socket behind the back of a subclass's ``run_many``
    (a wrapper that edits replies would be bypassed)."""
    api = Answering("unix:///nowhere.sock")
    pending = api.send_many(COMMANDS)
    assert api.asked == []
    assert pending.wait() == ["ok", "ok", "ok"]
    assert api.asked == [COMMANDS]
