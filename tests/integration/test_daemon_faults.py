"""The daemon against real faults: it keeps running, logs and counts each one, and never
writes a wrong weight.

Every fault is produced for real where a real process can produce it: HAProxy killed,
reloaded, stopped mid-tick or missing; a write HAProxy itself refuses; a retraining whose
real model is worse; a history file on a real full file system; signals to a real daemon
process; requests over a real socket. Only "training that raises" is injected, since no
real training can be told to crash on cue. Weights are always checked with ``get weight``
straight from HAProxy, never through VeloFlux.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from integration.haproxy_proc import BackendSpec, HAProxyProcess, ServerSpec, free_port
from tests.integration.daemon_helpers import (
    TOKEN,
    AgentFiles,
    DaemonProcess,
    Samples,
    agent_config,
    api_address,
    bearer,
    pending_connections,
    raw_exchange,
    request,
    running_daemon,
    samples,
    wait_turns,
    wait_until,
    write_config,
)
from tests.integration.helpers import run_cli, set_weights, weights
from tests.unit.learning_factories import FAST, WEAK, synthetic_observation, synthetic_raw
from veloflux.agent.build import open_registry
from veloflux.config.schema import Config
from veloflux.daemon.api.client import ApiClient, ApiRefused
from veloflux.daemon.service import Daemon
from veloflux.daemon.training_job import Trainer
from veloflux.history.journal import Journal
from veloflux.history.rates import derive_rates
from veloflux.model.pipeline import train_from_journal
from veloflux.model.train import TrainSettings
from veloflux.util.events import Events

pytestmark = pytest.mark.integration

APP = ["app/s1", "app/s2", "app/s3", "app/s4"]
CONFIGURED = {"app/s1": 10, "app/s2": 20, "app/s3": 30, "app/s4": 40}
STALE_REASON = "no recent history (stale observations)"
RESTORED = "restored after a proxy reload reset it to"


@pytest.fixture
def files(tmp_path: Path) -> AgentFiles:
    return AgentFiles(tmp_path / "agent")


def _config(socket_address: str, files: AgentFiles, **options: Any) -> Path:
    return write_config(files, agent_config(socket_address, files, **options))


def _reader(daemon: Daemon) -> Callable[[], Samples]:
    return lambda: samples(daemon)


def _client(daemon: Daemon) -> ApiClient:
    return ApiClient(*api_address(daemon), TOKEN)


def _get(daemon: Daemon, path: str) -> tuple[int, str]:
    reply = request(api_address(daemon), "GET", path)
    return reply.status, reply.text


def _status(daemon: Daemon) -> dict[str, Any]:
    status: dict[str, Any] = request(api_address(daemon), "GET", "/status").json()
    return status


def _weights_become(socket: str, expected: dict[str, int], what: str) -> None:
    wait_until(lambda: weights(socket, list(expected)) == expected, what)


# --- HAProxy goes away, or changes under the daemon -------------------------------------


def test_haproxy_killed_then_restarted_holds_then_restores_weights_in_one_tick(
    haproxy: HAProxyProcess, files: AgentFiles
) -> None:
    config = _config(haproxy.admin_socket, files, policy={"static_weights": {"app/s1": 40}})
    wanted = {**CONFIGURED, "app/s1": 40}
    with running_daemon(config) as daemon:
        read = _reader(daemon)
        _weights_become(haproxy.admin_socket, wanted, "the daemon to step app/s1 up to 40")

        haproxy.kill()
        failed = read().value("veloflux_tick_failures_total", reason="source")
        wait_until(
            lambda: read().value("veloflux_tick_failures_total", reason="source") >= failed + 3,
            "ticks failing on the dead socket",
        )
        now = read()
        assert now.get("veloflux_source_up", source="haproxy") == 0
        assert now.value("veloflux_tick_failures_total", reason="error") == 0
        assert _get(daemon, "/-/healthy") == (200, "ok\n")  # the loop turns: healthy
        status = _status(daemon)
        assert status["sources"]["haproxy"]["up"] is False
        assert "connection refused" in status["last_tick"]["error"]

        haproxy.start()  # a new process: every runtime weight back to the configured one
        wait_until(
            lambda: read().value("veloflux_proxy_reloads_total") == 1, "the restart to be seen"
        )
        # The tick that saw the new process already wrote the weight back, in one step.
        assert weights(haproxy.admin_socket, APP) == wanted
        restored = [e for e in files.audit_entries() if RESTORED in e["reason"]]
        assert [(e["server"], e["old"], e["new"]) for e in restored] == [("s1", 10, 40)]
        assert read().get("veloflux_source_up", source="haproxy") == 1
        assert daemon.events.count("proxy_reloaded") == 1


def test_haproxy_reload_resets_counters_and_weights_restored_within_one_tick(
    haproxy: HAProxyProcess, files: AgentFiles
) -> None:
    config = _config(haproxy.admin_socket, files, policy={"static_weights": {"app/s1": 40}})
    wanted = {**CONFIGURED, "app/s1": 40}
    with running_daemon(config) as daemon:
        read = _reader(daemon)
        _weights_become(haproxy.admin_socket, wanted, "the daemon to step app/s1 up to 40")
        old_pid = haproxy.pid
        new_pid = haproxy.reload()
        wait_until(
            lambda: read().value("veloflux_proxy_reloads_total") == 1, "the reload to be seen"
        )
        assert weights(haproxy.admin_socket, APP) == wanted
        restored = [e for e in files.audit_entries() if RESTORED in e["reason"]]
        assert [(e["server"], e["old"], e["new"]) for e in restored] == [("s1", 10, 40)]
        wait_turns(read, 2, "ticks after the reload")
        assert weights(haproxy.admin_socket, APP) == wanted
        assert read().value("veloflux_tick_failures_total", reason="error") == 0

    # The journal saw both processes, and marks the counter reset instead of a jump.
    with Journal(files.history, Events()) as journal:
        history = journal.read()
    assert {old_pid, new_pid} <= set(history["proxy_pid"])
    rates = derive_rates(history)
    first_after = rates[rates["proxy_pid"] == new_pid].groupby("server").head(1)
    assert first_after["reset"].all()
    assert not (rates["requests"].dropna() < 0).any()


def test_socket_missing_at_start_up_not_ready_until_haproxy_appears(
    tmp_path: Path, files: AgentFiles
) -> None:
    servers = tuple(ServerSpec(f"s{i}", "127.0.0.1:9", 10 * i) for i in range(1, 5))
    late = HAProxyProcess(tmp_path / "late", [BackendSpec("app", servers)])
    config = _config(late.admin_socket, files, policy={"static_weights": {"app/s1": 12}})
    try:
        with running_daemon(config) as daemon:
            read = _reader(daemon)
            wait_until(
                lambda: read().value("veloflux_tick_failures_total", reason="source") >= 2,
                "ticks failing on the missing socket",
            )
            status, text = _get(daemon, "/-/ready")
            assert status == 503
            assert "no such socket file" in text
            assert _get(daemon, "/-/healthy") == (200, "ok\n")
            assert read().get("veloflux_source_up", source="haproxy") == 0

            late.start()
            wait_until(lambda: _get(daemon, "/-/ready")[0] == 200, "ready once HAProxy is up")
            assert read().get("veloflux_source_up", source="haproxy") == 1
            _weights_become(
                late.admin_socket, {**CONFIGURED, "app/s1": 12}, "the first write after recovery"
            )
            assert read().value("veloflux_tick_failures_total", reason="error") == 0
    finally:
        late.stop()


def test_source_failing_holds_weights_then_static_after_stale_after(
    haproxy: HAProxyProcess, files: AgentFiles, synthetic_history: Path
) -> None:
    """The admin socket file disappears while HAProxy runs (someone removed it): no tick
    can read or write, and a weight changed meanwhile is held; once the socket is back
    after ``stale_after``, the model sees stale history and the plan moves to static."""
    config = _config(
        haproxy.admin_socket,
        files,
        # No hold for weights moved by hand: the move below tests staleness, not that.
        policy={
            "static_weights": {"app/s1": 40},
            "stale_after": "2s",
            "external_change_hold": "0s",
        },
    )
    with running_daemon(config, trainer=_trainer(synthetic_history, FAST)) as daemon:
        read = _reader(daemon)
        run = daemon.train()
        assert run.outcome == "promoted", run.message
        version = run.report["version"] if run.report else None
        wait_until(
            lambda: read().get("veloflux_model_info", version=str(version)) == 1,
            "the promoted model to be in use",
        )
        _weights_become(haproxy.admin_socket, {"app/s1": 40}, "app/s1 stepped up to 40")

        admin = haproxy.workdir / "admin.sock"
        hidden = haproxy.workdir / "admin.sock.hidden"
        admin.rename(hidden)
        try:
            # Moved meanwhile (through the TCP admin socket the daemon does not use).
            set_weights(haproxy.tcp_admin, {"app/s1": 20})
            failed = read().value("veloflux_tick_failures_total", reason="source")
            # 6 failed ticks of 0.5 s: longer than stale_after (2 s).
            wait_until(
                lambda: read().value("veloflux_tick_failures_total", reason="source") >= failed + 6,
                "ticks failing for longer than stale_after",
            )
            assert weights(haproxy.tcp_admin, ["app/s1"]) == {"app/s1": 20}  # held
        finally:
            hidden.rename(admin)

        _weights_become(haproxy.admin_socket, {"app/s1": 40}, "app/s1 back to static")
        writes = [e for e in files.audit_entries() if e["old"] == 20]
        assert [(e["server"], e["new"], e["mode"]) for e in writes] == [("s1", 30, "fallback")]
        assert writes[0]["reason"].startswith(STALE_REASON), writes[0]
        assert writes[0]["model_version"] == version


# --- writes HAProxy refuses --------------------------------------------------------------


def test_write_refused_at_socket_level_user_is_counted_and_nothing_written(
    haproxy: HAProxyProcess, files: AgentFiles
) -> None:
    config = _config(haproxy.user_socket, files, policy={"static_weights": {"app/s1": 12}})
    with running_daemon(config) as daemon:
        read = _reader(daemon)
        wait_until(
            lambda: read().value("veloflux_tick_failures_total", reason="sink") >= 3,
            "ticks refused by the user-level socket",
        )
        now = read()
        assert now.value("veloflux_ticks_total") == 0
        assert now.event("sink_rejected") >= 3
        assert now.value("veloflux_tick_failures_total", reason="error") == 0
        assert _get(daemon, "/-/healthy")[0] == 200
        status, text = _get(daemon, "/-/ready")
        assert status == 503
        assert "level user" in text
    assert weights(haproxy.admin_socket, APP) == CONFIGURED
    assert files.audit_entries() == []


def test_write_refused_for_one_pool_is_counted_and_other_pools_written(
    haproxy: HAProxyProcess, files: AgentFiles
) -> None:
    """``sticky`` is declared consistent-hash but is map-based: HAProxy refuses its weights."""
    config = _config(
        haproxy.admin_socket,
        files,
        haproxy={"consistent_hash_backends": ["sticky"]},
        policy={"static_weights": {"app/s1": 12, "sticky/h1": 9}},
    )
    with running_daemon(config) as daemon:
        read = _reader(daemon)
        wait_until(
            lambda: read().value("veloflux_weight_write_failures_total", backend="sticky") >= 3,
            "the refused writes to be counted",
        )
        now = read()
        assert now.event("sink_rejected") >= 3
        assert now.value("veloflux_tick_failures_total", reason="error") == 0
        assert now.value("veloflux_weight_write_failures_total", backend="app") == 0
    assert weights(haproxy.admin_socket, [*APP, "sticky/h1"]) == {
        **CONFIGURED,
        "app/s1": 12,
        "sticky/h1": 5,
    }
    assert {(e["backend"], e["server"]) for e in files.audit_entries()} == {("app", "s1")}


# --- training ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A journal of a plausible pool, so that training has something to learn from."""
    raw = synthetic_raw()
    path = tmp_path_factory.mktemp("synthetic") / "history.sqlite"
    with Journal(path, Events()) as journal:
        for when in sorted(raw["time"].unique()):
            journal.append(synthetic_observation(raw, pd.Timestamp(when)))
    return path


def _trainer(history: Path, *settings: TrainSettings) -> Trainer:
    """The real training on ``history``, into the daemon's registry, with ``settings`` in turn."""
    queue = list(settings)

    def train(config: Config, events: Events, _cancelled: Callable[[], bool]) -> dict[str, Any]:
        with Journal(history, events) as journal:
            registry = open_registry(config, events)
            return train_from_journal(journal, registry, queue.pop(0)).to_json()

    return train


def test_training_that_raises_is_counted_and_ticks_go_on(
    haproxy: HAProxyProcess, files: AgentFiles
) -> None:
    def broken(_config: Config, _events: Events, _cancelled: Callable[[], bool]) -> dict[str, Any]:
        raise RuntimeError("injected: the trainer crashed")

    config = _config(haproxy.admin_socket, files, policy={"static_weights": {"app/s1": 12}})
    with running_daemon(config, trainer=broken) as daemon:
        read = _reader(daemon)
        run = daemon.train()
        assert run.outcome == "failed"
        assert "RuntimeError: injected: the trainer crashed" in run.message
        now = read()
        assert now.value("veloflux_trainings_total", outcome="failed") == 1
        assert now.event("training_failed") == 1
        assert _status(daemon)["last_training"]["outcome"] == "failed"
        wait_turns(read, 2, "ticks after the failed training")
        assert read().value("veloflux_tick_failures_total", reason="error") == 0
        _weights_become(haproxy.admin_socket, {**CONFIGURED, "app/s1": 12}, "static weights")


def test_a_worse_retrained_model_is_not_promoted(
    haproxy: HAProxyProcess, files: AgentFiles, synthetic_history: Path
) -> None:
    config = _config(haproxy.admin_socket, files)
    trainer = _trainer(synthetic_history, FAST, WEAK)
    with running_daemon(config, trainer=trainer) as daemon:
        read = _reader(daemon)
        good = daemon.train()
        assert good.outcome == "promoted", good.message
        assert good.report is not None
        version = good.report["version"]
        wait_until(
            lambda: read().get("veloflux_model_info", version=version) == 1,
            "the good model to be in use",
        )

        worse = daemon.train()
        assert worse.outcome == "not_promoted", worse.message
        assert worse.report is not None
        assert f"does not beat current model {version}" in worse.message
        assert (
            worse.report["metrics"]["mae_p50_seconds"] > good.report["metrics"]["mae_p50_seconds"]
        )
        now = read()
        assert now.value("veloflux_trainings_total", outcome="promoted") == 1
        assert now.value("veloflux_trainings_total", outcome="not_promoted") == 1
        assert daemon.events.count("training_not_promoted") == 1
        wait_turns(read, 2, "ticks after the refused model")
        assert read().get("veloflux_model_info", version=version) == 1
        assert read().get("veloflux_model_info", version=worse.report["version"]) is None
        assert _status(daemon)["model"]["version"] == version
        assert (files.models / "current").read_text().strip() == version
    assert weights(haproxy.admin_socket, APP) == CONFIGURED  # idle pool: static weights


# --- the history file on a full disk -------------------------------------------------------


def _full_disk_prefix(directory: Path) -> tuple[list[str], str]:
    """Run the daemon with ``directory`` on a tiny file system of its own.

    A private mount namespace with a 128 KiB tmpfs gives a real ENOSPC (SQLite: "database
    or disk is full"). Where unprivileged mount namespaces are off, a file-size limit
    (RLIMIT_FSIZE, EFBIG: "disk I/O error") is the real fault that is left.
    """
    directory.mkdir(parents=True, exist_ok=True)
    unshare = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c"]
    mount = 'mount -t tmpfs -o size={} veloflux-full "$0"'
    probe = subprocess.run(
        [*unshare, mount.format("64k"), str(directory)], capture_output=True, check=False
    )
    if probe.returncode == 0:
        command = mount.format("128k") + ' && exec "$@"'
        return [*unshare, command, str(directory)], "database or disk is full"
    limit = (
        "import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (131072, 131072)); "
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", limit], "disk I/O error"


def test_full_disk_for_the_history_file_is_counted_and_weights_still_written(
    haproxy: HAProxyProcess, files: AgentFiles, tmp_path: Path
) -> None:
    port = free_port()
    config = _config(
        haproxy.admin_socket,
        files,
        listen=f"127.0.0.1:{port}",
        policy={"max_step_ratio": 5, "external_change_hold": "0s"},  # moved back at once
    )
    prefix, cause = _full_disk_prefix(files.history.parent)
    with DaemonProcess(config, port, tmp_path / "daemon.log", prefix) as daemon:
        daemon.wait_ready()
        wait_until(
            lambda: daemon.scrape().event("history_write_failed") >= 2,
            "appends to fail on the full disk",
            timeout=60,
        )
        message = daemon.wait_log(lambda m: m.startswith("history_write_failed"), "the log line")
        assert cause in message
        # The loop goes on writing weights: one moved by hand is put back.
        set_weights(haproxy.admin_socket, {"app/s1": 3})
        _weights_become(haproxy.admin_socket, CONFIGURED, "app/s1 written back after disk full")
        now = daemon.scrape()
        assert now.value("veloflux_tick_failures_total", reason="error") == 0
        assert now.value("veloflux_weight_changes_total", backend="app") >= 1
        failures = now.event("history_write_failed")
        wait_turns(daemon.scrape, 2, "ticks on a full disk")
        assert daemon.scrape().event("history_write_failed") > failures
        daemon.send(signal.SIGTERM)
        assert daemon.wait_exit() == 0


# --- signals -------------------------------------------------------------------------------


def test_sighup_with_a_broken_config_keeps_the_old_one(
    haproxy: HAProxyProcess, files: AgentFiles, tmp_path: Path
) -> None:
    port = free_port()
    good = agent_config(
        haproxy.admin_socket,
        files,
        listen=f"127.0.0.1:{port}",
        policy={"static_weights": {"app/s1": 12}},
    )
    config = write_config(files, good)
    with DaemonProcess(config, port, tmp_path / "daemon.log") as daemon:
        daemon.wait_ready()
        _weights_become(haproxy.admin_socket, {"app/s1": 12}, "the first config's weight")

        text = config.read_text(encoding="utf-8")
        config.write_text(text.replace("interval: 500ms", "interval: fast\nintervall: 1s"))
        daemon.send(signal.SIGHUP)
        refused = daemon.wait_log(lambda m: m.startswith("config_reload_refused"), "the refusal")
        assert "interval: 'fast' is not a duration" in refused
        assert "intervall: unknown key" in refused
        now = daemon.scrape()
        assert now.get("veloflux_config_last_reload_successful") == 0
        assert now.event("config_reload_refused") == 1
        wait_turns(daemon.scrape, 3, "ticks on the old config")
        assert weights(haproxy.admin_socket, ["app/s1"]) == {"app/s1": 12}

        write_config(files, {**good, "policy": {"static_weights": {"app/s1": 30}}})
        daemon.send(signal.SIGHUP)
        daemon.wait_log(lambda m: m.startswith("config reloaded from"), "the reload")
        assert daemon.scrape().get("veloflux_config_last_reload_successful") == 1
        _weights_become(haproxy.admin_socket, {"app/s1": 30}, "the new config's weight")
        assert daemon.scrape().value("veloflux_tick_failures_total", reason="error") == 0
        daemon.send(signal.SIGTERM)
        assert daemon.wait_exit() == 0


def _pin_s1(daemon: DaemonProcess, weight: int) -> None:
    client = ApiClient(*daemon.address, TOKEN)
    client.set_override("app/s1", weight, None)


def test_sigterm_stops_after_the_tick_in_progress_and_keeps_weights(
    haproxy: HAProxyProcess, files: AgentFiles, tmp_path: Path
) -> None:
    """HAProxy is frozen (SIGSTOP) so that a tick hangs on its socket until the 2 s
    timeout; SIGTERM then arrives in the middle of that tick."""
    port = free_port()
    config = _config(
        haproxy.admin_socket, files, listen=f"127.0.0.1:{port}", policy={"on_exit": "keep"}
    )
    with DaemonProcess(config, port, tmp_path / "daemon.log") as daemon:
        daemon.wait_ready()
        _pin_s1(daemon, 5)
        _weights_become(haproxy.admin_socket, {"app/s1": 5}, "the pinned weight")
        os.kill(haproxy.pid, signal.SIGSTOP)
        try:
            # A connection stays in a frozen listener's backlog after its tick gave up,
            # so wait for a new one: a tick that has just connected and now blocks.
            socket_path = haproxy.workdir / "admin.sock"
            stale = pending_connections(socket_path)
            wait_until(
                lambda: pending_connections(socket_path) > stale,
                "a tick to block on the frozen HAProxy",
            )
            daemon.send(signal.SIGTERM)
            assert daemon.wait_exit(timeout=10) == 0
        finally:
            os.kill(haproxy.pid, signal.SIGCONT)
    messages = daemon.messages()
    stop = messages.index("signal SIGTERM: stopping after the current tick")
    after = messages[stop + 1 :]
    assert any(m.startswith("tick failed (source)") and "no complete answer" in m for m in after), (
        after
    )
    assert after[-1] == "stopped"
    assert weights(haproxy.admin_socket, APP) == {**CONFIGURED, "app/s1": 5}  # on_exit: keep


def test_sigint_with_on_exit_static_puts_static_weights_back(
    haproxy: HAProxyProcess, files: AgentFiles, tmp_path: Path
) -> None:
    port = free_port()
    config = _config(
        haproxy.admin_socket, files, listen=f"127.0.0.1:{port}", policy={"on_exit": "static"}
    )
    with DaemonProcess(config, port, tmp_path / "daemon.log") as daemon:
        daemon.wait_ready()
        _pin_s1(daemon, 5)
        _weights_become(haproxy.admin_socket, {"app/s1": 5}, "the pinned weight")
        daemon.send(signal.SIGINT)
        assert daemon.wait_exit() == 0
    messages = daemon.messages()
    assert "signal SIGINT: stopping after the current tick" in messages
    assert messages[-1] == "stopped"
    assert weights(haproxy.admin_socket, APP) == CONFIGURED
    reverted = [e for e in files.audit_entries() if e["reason"] == "revert to static"]
    assert [(e["server"], e["old"], e["new"]) for e in reverted] == [("s1", 5, 10)]


# --- operators: overrides, pause, the API's refusals -----------------------------------


def test_override_naming_an_unknown_server_is_refused_and_nothing_written(
    haproxy: HAProxyProcess, files: AgentFiles
) -> None:
    data = agent_config(haproxy.admin_socket, files)
    config = write_config(files, data)
    with running_daemon(config) as daemon:
        read = _reader(daemon)
        wait_until(lambda: _get(daemon, "/-/ready")[0] == 200, "the daemon to be ready")
        client = _client(daemon)
        refusals = {
            "app/nope": (404, "unknown server 'app/nope'"),
            "nosuch/s1": (404, "unknown backend 'nosuch'"),
            "legacy/l1": (409, "backend 'legacy' is not managed"),
            "app/s1;set server app/s2 weight 0": (400, "server:"),
        }
        for server, (status, reason) in refusals.items():
            with pytest.raises(ApiRefused) as refused:
                client.set_override(server, 1, None)
            assert refused.value.status == status, server
            assert reason in refused.value.message, server

        # The operator's command, against the daemon's real port.
        cli_config = files.root / "cli.yaml"
        listen = "{}:{}".format(*api_address(daemon))
        cli_config.write_text(yaml.safe_dump({**data, "api": {**data["api"], "listen": listen}}))
        result = run_cli("override", "set", "-c", cli_config, "app/nope", "3")
        assert result.code == 1, result
        assert "unknown server 'app/nope'" in result.stderr

        now = read()
        assert daemon.events.count("api_request_refused", reason="control_refused") == 4
        assert daemon.events.count("api_request_refused", reason="bad_request") == 1
        assert now.event("api_request_refused") == 5
        assert client.overrides() == []
        wait_turns(read, 2, "ticks after the refusals")
    assert weights(haproxy.admin_socket, [*APP, "legacy/l1"]) == {**CONFIGURED, "legacy/l1": 5}


def test_api_write_without_or_with_a_wrong_token_is_refused(
    haproxy: HAProxyProcess, files: AgentFiles
) -> None:
    config = _config(haproxy.admin_socket, files, policy={"static_weights": {"app/s1": 12}})
    with running_daemon(config) as daemon:
        address = api_address(daemon)
        attempts: list[tuple[str, str, dict[str, str]]] = [
            ("POST", "/api/v1/pause", {}),
            ("POST", "/api/v1/pause", bearer("wrong-token")),
            ("POST", "/api/v1/pause", {"Authorization": f"Basic {TOKEN}"}),
            ("POST", "/api/v1/pause", bearer(TOKEN + "x")),
            ("DELETE", "/api/v1/overrides", {}),
        ]
        for method, path, headers in attempts:
            reply = request(address, method, path, b"{}", headers)
            assert reply.status == 401, (method, path, headers, reply)
            assert reply.headers.get("WWW-Authenticate") == "Bearer"
            assert reply.json() == {"error": "missing or wrong bearer token"}
        assert daemon.events.count("api_request_refused", reason="unauthorized") == 5
        assert samples(daemon).event("api_request_refused") == 5
        _weights_become(haproxy.admin_socket, {"app/s1": 12}, "writes to go on, not paused")
        assert _status(daemon)["paused"] is False
        assert samples(daemon).get("veloflux_paused") == 0


def test_api_writes_are_off_without_a_token_file(
    haproxy: HAProxyProcess, files: AgentFiles
) -> None:
    config = _config(haproxy.admin_socket, files, token=False)
    with running_daemon(config) as daemon:
        reply = request(api_address(daemon), "POST", "/api/v1/pause", b"{}", bearer())
        assert reply.status == 403
        assert "set api.token_file" in reply.json()["error"]
        assert daemon.events.count("api_request_refused", reason="controls_disabled") == 1
        wait_turns(_reader(daemon), 2, "ticks after the refusal")
        assert _status(daemon)["paused"] is False
    assert weights(haproxy.admin_socket, APP) == CONFIGURED


def test_huge_or_malformed_api_body_is_refused_and_the_api_keeps_serving(
    haproxy: HAProxyProcess, files: AgentFiles
) -> None:
    config = _config(haproxy.admin_socket, files)
    with running_daemon(config) as daemon:
        address = api_address(daemon)
        wait_until(lambda: _get(daemon, "/-/ready")[0] == 200, "the daemon to be ready")
        path = "/api/v1/overrides"
        auth = bearer()
        huge = {**auth, "Content-Length": str(10**12)}
        reply = request(address, "POST", path, b"", huge)
        assert reply.status == 413
        assert "exceeds the limit of 65536" in reply.json()["error"]
        bad_bodies = [
            b'{"server": "app/s1", "weight": ',
            b"\xff\xfe not json",
            b'["app/s1", 3]',
            b"[" * 60_000,
            b'{"server": "app/s1", "weight": 3, "extra": 1}',
            b'{"server": "app/s1", "weight": "3"}',
            b'{"server": "app/s1", "weight": 9999}',
        ]
        for body in bad_bodies:
            reply = request(address, "POST", path, body, auth)
            assert reply.status == 400, (body[:40], reply)
            assert "error" in reply.json()
        reply = request(address, "POST", path, b"{}", {**auth, "Content-Length": "-1"})
        assert reply.status == 400
        garbage = raw_exchange(address, b"\x16\x03\x01\x02\x00 GARBAGE\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.0 400 "), garbage[:80]
        assert b"Traceback" not in garbage

        events = daemon.events
        assert events.count("api_request_refused", reason="body_too_large") == 1
        assert events.count("api_request_refused", reason="bad_request") == len(bad_bodies) + 1
        assert events.count("api_request_refused", reason="malformed_request") == 1
        assert _get(daemon, "/-/healthy")[0] == 200
        assert _client(daemon).overrides() == []
        assert weights(haproxy.admin_socket, APP) == CONFIGURED

        # The same API still takes a good request, and the pin is written exactly.
        _client(daemon).set_override("app/s1", 7, None)
        _weights_become(haproxy.admin_socket, {**CONFIGURED, "app/s1": 7}, "the valid pin")


def test_pause_holds_every_write_and_resume_resumes(
    haproxy: HAProxyProcess, files: AgentFiles
) -> None:
    config = _config(haproxy.admin_socket, files, policy={"max_step_ratio": 2})
    with running_daemon(config) as daemon:
        read = _reader(daemon)
        wait_until(lambda: _get(daemon, "/-/ready")[0] == 200, "the daemon to be ready")
        client = _client(daemon)
        client.pause("maintenance window")
        wait_turns(read, 1, "a tick begun before the pause to end")
        set_weights(haproxy.admin_socket, {"app/s1": 3, "app/s2": 3})
        client.set_override("app/s3", 7, None)
        rows = _journal_rows(files)
        wait_turns(read, 4, "ticks while paused")
        held = {"app/s1": 3, "app/s2": 3, "app/s3": 30, "app/s4": 40}
        assert weights(haproxy.admin_socket, APP) == held
        status = _status(daemon)
        assert (status["paused"], status["pause_reason"]) == (True, "maintenance window")
        assert read().get("veloflux_paused") == 1
        assert _journal_rows(files) > rows  # still observing and recording while paused
        assert all(e["server"] != "s3" for e in files.audit_entries())

        client.resume()
        _weights_become(
            haproxy.admin_socket,
            {"app/s1": 10, "app/s2": 20, "app/s3": 7, "app/s4": 40},
            "writes to resume",
        )
        assert read().get("veloflux_paused") == 0


def _journal_rows(files: AgentFiles) -> int:
    with Journal(files.history, Events()) as journal:
        return journal.count()


def test_overrides_survive_a_restart(haproxy: HAProxyProcess, files: AgentFiles) -> None:
    config = _config(haproxy.admin_socket, files)
    with running_daemon(config) as first:
        wait_until(lambda: _get(first, "/-/ready")[0] == 200, "the daemon to be ready")
        _client(first).set_override("app/s2", 7, None)
        _weights_become(haproxy.admin_socket, {"app/s2": 7}, "the pin")
    # While no daemon runs, the weight is reset by hand; the new daemon must pin it again.
    set_weights(haproxy.admin_socket, {"app/s2": 20})
    with running_daemon(config) as second:
        read = _reader(second)
        _weights_become(haproxy.admin_socket, {"app/s2": 7}, "the pin after the restart")
        assert [(o["server"], o["weight"]) for o in _client(second).overrides()] == [("app/s2", 7)]
        assert read().get("veloflux_overrides_active") == 1
        wait_turns(read, 3, "ticks after the restart")
        assert weights(haproxy.admin_socket, APP) == {**CONFIGURED, "app/s2": 7}
