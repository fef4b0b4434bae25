"""docs/security.md's claims that need a real HAProxy or a real process to prove.

- A hostile server name in what HAProxy (or whatever answers on its socket) replies
  never reaches a runtime command: a relay in front of a real HAProxy rewrites one
  server's name in every reply, ``veloflux-agent revert`` runs through it, and every
  command line it sent is read back.
- A token file other users can read stops ``run`` and ``check-config`` (exit 1).
- A model file changed after VeloFlux wrote it is refused by ``model promote``, and the
  model that was current stays current.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from integration.haproxy_proc import BackendSpec, HAProxyProcess, ServerSpec, free_port
from tests.conftest import StartHAProxy, write_config
from tests.integration.helpers import run_cli, set_weights, weights
from tests.integration.test_deploy_kit import container, pod_spec, service
from veloflux.model.registry import Registry
from veloflux.util.events import Events

pytestmark = pytest.mark.integration

IO_TIMEOUT_S = 5.0  # not a performance bound: only keeps a broken peer from hanging the test
# Every command line VeloFlux may send to HAProxy's runtime API, names in HAProxy's alphabet.
_NAME = r"[A-Za-z0-9_.:-]+"
_SAFE_COMMAND = re.compile(
    rf"prompt|quit|show info|show cli level|show stat -1 6 -1|show servers state( {_NAME})?"
    rf"|set server {_NAME}/{_NAME} weight \d+"
)


class ReplyRewriter:
    """A unix socket standing in for HAProxy's: each connection's commands are passed to
    the real HAProxy, and its replies come back with ``old`` replaced by ``new``. Every
    line a client sent is kept in ``received``."""

    def __init__(self, path: Path, target: Path, old: bytes, new: bytes) -> None:
        self.path, self._target, self._old, self._new = path, target, old, new
        self.received: list[str] = []
        self.rewritten = 0  # replies in which ``old`` was found and replaced
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(16)
        self._listener.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(IO_TIMEOUT_S)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(IO_TIMEOUT_S)
            request = b""
            while not request.endswith(b"quit\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                request += chunk
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as upstream:
                upstream.settimeout(IO_TIMEOUT_S)
                upstream.connect(str(self._target))
                upstream.sendall(request)
                reply = b""
                while chunk := upstream.recv(65536):
                    reply += chunk
            with self._lock:
                self.received += request.decode("utf-8", errors="replace").splitlines()
                self.rewritten += self._old in reply
            conn.sendall(reply.replace(self._old, self._new))


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a unix socket's path is limited to 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="vf-sec-") as name:
        yield Path(name)


SERVERS = ("web1", "web2", "victim")


@pytest.mark.parametrize(
    ("hostile", "code"),
    [
        pytest.param(b"victim;help", 0, id="semicolon"),
        pytest.param(b"victim;set server app/web1 weight 0", 0, id="semicolon-command"),
        pytest.param(b"vic tim", 0, id="space"),
        # A line break splits the row of 'show stat': the reply is malformed, exit 2.
        pytest.param(b"victim\nshow info", 2, id="newline"),
    ],
)
def test_a_hostile_server_name_in_a_reply_never_reaches_a_command(
    start_haproxy: StartHAProxy, tmp_path: Path, short_dir: Path, hostile: bytes, code: int
) -> None:
    """A row whose name could inject a command is held (exit 0, the others written), or
    the reply it breaks is refused whole (exit 2, nothing written); either way no line
    sent to the socket names it. End to end through every layer of checks (the source's,
    the sink's, the runtime client's); each has its own unit tests."""
    haproxy = start_haproxy(
        [BackendSpec("app", tuple(ServerSpec(s, "127.0.0.1:9", 10) for s in SERVERS))]
    )
    real = Path(haproxy.admin_socket.removeprefix("unix://"))
    set_weights(haproxy.admin_socket, {f"app/{s}": 1 for s in SERVERS})
    relay = ReplyRewriter(short_dir / "relay.sock", real, b"victim", hostile)
    try:
        extra = f"api:\n  listen: 127.0.0.1:{free_port()}\n  state_path: {tmp_path}/operator.json\n"
        config = write_config(tmp_path / "v.yaml", f"unix://{relay.path}", extra)
        result = run_cli("revert", "-c", config, "--output", "json")
    finally:
        relay.close()
    assert relay.rewritten > 0, "the relay never saw the server it was to rename"
    assert "Traceback" not in result.stderr
    unsafe = [line for line in relay.received if not _SAFE_COMMAND.fullmatch(line)]
    assert unsafe == [], result.stderr
    assert not any("victim" in line or "vic" in line for line in relay.received)
    after = weights(haproxy.admin_socket, [f"app/{s}" for s in SERVERS])
    assert after["app/victim"] == 1  # never written
    assert result.code == code, result.stderr
    if code == 0:  # the row is held, saying why; the others went back to static
        (pool,) = result.json()["pools"]
        (held,) = [s for s in pool["servers"] if s["server"] not in SERVERS]
        assert held["server"].encode() == hostile
        assert held["planned_weight"] == held["current_weight"] == 1
        assert "unsafe name" in held["reason"]
        assert after == {"app/web1": 10, "app/web2": 10, "app/victim": 1}
    else:  # a reply the name made unreadable: nothing at all was written
        assert after == {f"app/{s}": 1 for s in SERVERS}


# --- the token file ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o606])
def test_a_token_file_other_users_can_read_stops_the_daemon_and_check_config(
    haproxy: HAProxyProcess, tmp_path: Path, mode: int
) -> None:
    token = tmp_path / "api-token"
    token.write_text(os.urandom(16).hex() + "\n", encoding="utf-8")
    token.chmod(mode)
    extra = (
        f"api:\n  listen: 127.0.0.1:{free_port()}\n  token_file: {token}\n"
        f"  state_path: {tmp_path}/operator.json\n"
    )
    config = write_config(tmp_path / "v.yaml", haproxy.admin_socket, extra)
    expected = f"api.token_file: {token} is mode {mode:04o}: other users of this host can read"
    checked = run_cli("check-config", "-c", config)
    assert checked.code == 1
    assert expected in checked.stdout + checked.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("VELOFLUX_")}
    run = subprocess.run(
        [sys.executable, "-m", "veloflux", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert run.returncode == 1
    assert expected in run.stderr
    assert "Traceback" not in run.stderr
    token.chmod(0o640)  # owner and group only: the same file is accepted
    assert run_cli("check-config", "-c", config).code == 0


# --- models --------------------------------------------------------------------------------


def test_a_tampered_model_is_refused_by_promote_and_the_current_one_kept(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "v.yaml", "unix:///nonexistent/admin.sock")
    models = tmp_path / "v-state" / "models"
    times = iter([datetime(2026, 1, 1, 10, tzinfo=UTC), datetime(2026, 1, 1, 11, tzinfo=UTC)])
    registry = Registry(models, lambda: next(times), Events())
    good = registry.save({"latency": b"good model bytes"}, {}).version
    registry.promote(good)
    bad = registry.save({"latency": b"candidate model bytes"}, {}).version
    booster = models / "versions" / bad / "latency.ubj"
    booster.write_bytes(b"x" * len(b"candidate model bytes"))  # same size, other bytes

    result = run_cli("model", "promote", "-c", config, "--force", bad)
    assert result.code == 1
    assert f"cannot make {bad} current" in result.stderr
    assert "checksum mismatch" in result.stderr
    assert (models / "current").read_text().strip() == good
    audit = tmp_path / "v-state" / "audit.jsonl"
    assert not audit.exists() or "model_promote" not in audit.read_text()
    shown = run_cli("model", "show", "-c", config)
    assert shown.code == 0, shown.stderr
    assert good in shown.stdout


# --- the deployment kit ----------------------------------------------------------------------


def test_the_kubernetes_token_is_mounted_for_the_agents_group_only() -> None:
    """The Secret's files are 0440 with the pod's fsGroup: the agent (uid and gid 10001)
    reads its token, and the agent's own refusal of a token others can read passes."""
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == "api-token")
    modes = [volume["secret"]["defaultMode"]]
    modes += [item["mode"] for item in volume["secret"].get("items", []) if "mode" in item]
    assert all(mode & 0o007 == 0 for mode in modes), [f"{m:04o}" for m in modes]
    assert (
        pod_spec()["securityContext"]["fsGroup"]
        == container("veloflux-agent")["securityContext"]["runAsGroup"]
    )


def test_the_systemd_unit_keeps_the_state_from_other_users() -> None:
    """The state directory 0750 and UMask=0027: journal, models, audit log, operator
    state and EDS files are the agent's and its group's to read, nobody else's."""
    unit = {key: values[-1] for key, values in service().items()}
    assert unit["StateDirectoryMode"] == "0750"
    assert unit["UMask"] == "0027"
