"""#18: no traceback on any bad input from a user.

Every command and subcommand, run as an operator types it (a fresh interpreter through
``run_cli``), with an unknown flag, a flag missing its value, bad values, a config file
that is missing, not YAML, not text or wrong, bad ``VELOFLUX_*`` variables, a proxy
that is not there and no daemon listening. Each run must end with no traceback, one
human message on stderr that names what is wrong, said once, and the exit code of the
contract (README, ``veloflux/cli/app.py``): click's usage errors 2, a configuration
error or a refused request 1, a proxy or daemon API that cannot be reached 2.

No HAProxy runs: the socket in every config is a path where none exists, and
``api.listen`` is a port nobody listens on. Every file a command could write
(journal, models, audit log, operator state, EDS files) is under ``tmp_path``.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from integration.haproxy_proc import HAProxyProcess, free_port
from tests.integration.helpers import CliResult, run_cli
from veloflux.cli import main

pytestmark = pytest.mark.integration

USAGE, CONFIG, UNREACHABLE = 2, 1, 2  # the exit codes of the contract

DEAD_SOCKET = "unix:///nonexistent/admin.sock"
SCENARIO = Path(__file__).resolve().parents[2] / "bench" / "scenarios" / "slow-server.yaml"

# Each command that reads a config, with the arguments that make it otherwise valid
# (``-c FILE`` is added by each test).
WITH_CONFIG = {
    "check-config": "check-config",
    "dry-run": "dry-run",
    "apply": "apply",
    "revert": "revert",
    "record": "record --duration 1s",
    "train": "train",
    "forecast": "forecast",
    "model list": "model list",
    "model show": "model show",
    "model promote": "model promote v1",
    "model rollback": "model rollback",
    "run": "run",
    "override set": "override set app/s1 20",
    "override clear": "override clear",
    "pause": "pause",
    "resume": "resume",
    "status": "status",
    "render-envoy": "render-envoy --out {tmp}/out",
    "history export": "history export --out {tmp}/export",
}
# And the one that reads none.
WITHOUT_CONFIG = {"simulate": "simulate {scenario}"}
COMMANDS = {**WITH_CONFIG, **WITHOUT_CONFIG}
GROUPS = ("", "model", "override", "history")

# Leftovers of a Python crash in what a user sees.
TRACEBACK_SIGNS = (
    re.compile(r"Traceback \(most recent call last\)"),
    re.compile(r'^\s*File "', re.MULTILINE),
    # ``ValueError: ...``, ``yaml.scanner.ScannerError: ...``; click's own ``Error:`` is fine.
    re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b:?", re.MULTILINE),
    re.compile(r"^\S+\.py:\d+: \w*Warning:", re.MULTILINE),  # a Python warning
)
WORD = re.compile(r"\w")

# --- files, environment, running -------------------------------------------------------


def config_text(tmp: Path, port: int, proxy: str | None = None, extra: str = "") -> str:
    """A config whose every written file is under ``tmp``; by default a HAProxy socket
    that does not exist."""
    state = tmp / "state"
    proxy = proxy or f"haproxy:\n  socket: {DEAD_SOCKET}\n  timeout: 2s\n"
    return (
        f"interval: 10s\n{proxy}"
        f"ai:\n  history_path: {state}/history.sqlite\n  model_dir: {state}/models\n"
        f"  audit_log: {state}/audit.jsonl\n"
        f"api:\n  listen: 127.0.0.1:{port}\n  state_path: {state}/operator.json\n{extra}"
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """The files the cases name, written under ``tmp_path``: each by its placeholder."""
    port = free_port()  # api.listen: no daemon there
    good = config_text(tmp_path, port)
    dask_scheduler = f"tcp://127.0.0.1:{free_port()}"
    envoy = (
        f"envoy:\n  admin: http://127.0.0.1:{free_port()}\n  eds_dir: {tmp_path}/eds\n"
        "  timeout: 2s\n  clusters:\n    - name: app\n"
        "      endpoints: [{address: 127.0.0.1, port: 9, weight: 10}]\n"
    )
    written = {
        "good": good,
        "envoy": config_text(tmp_path, port, proxy=envoy),
        "prom": good + f"prometheus:\n  url: http://127.0.0.1:{free_port()}\n",
        # A Dask scheduler nobody listens on, given up on after a second.
        "dask": good.replace(
            "  audit_log:",
            f"  dask:\n    scheduler: {dask_scheduler}\n    connect_timeout: 1s\n  audit_log:",
        ),
        "dask_tls": good.replace(
            "  audit_log:", "  dask:\n    scheduler: tls://127.0.0.1:8786\n  audit_log:"
        ),
        # Tab indentation: the classic way a hand-edited file stops being YAML.
        "not_yaml": "interval: 10s\nhaproxy:\n\tsocket: unix:///run/haproxy/admin.sock\n",
        # HAProxy's own config given by mistake: YAML, but a string, not a mapping.
        "haproxy_cfg": "global\n    stats socket /run/haproxy/admin.sock level admin\n",
        "interval": good.replace("interval: 10s", "interval: fast"),
        "misspelt": good + "polcy:\n  max_step_ratio: 0.3\n",
        "listen": good.replace(f"listen: 127.0.0.1:{port}", "listen: localhost"),
        "token": good + f"  token_file: {tmp_path}/no-such-token\n",
        "scenario_not_yaml": "servers: [fast, slow\n",
        "a_file": "not a directory\n",
    }
    paths = {name: tmp_path / f"{name.replace('_', '-')}.yaml" for name in written}
    for name, text in written.items():
        paths[name].write_text(text, encoding="utf-8")
    # A gzip header and more bytes that are not UTF-8: a binary file given as the config.
    paths["binary"] = tmp_path / "binary.yaml"
    paths["binary"].write_bytes(b"\x1f\x8b\x08\x00\xc3\x28\xff\xfe interval: 10s\n")
    return {
        **{name: str(path) for name, path in paths.items()},
        "missing": str(tmp_path / "missing.yaml"),
        "tmp": str(tmp_path),
        "api": f"127.0.0.1:{port}",
        "socket": DEAD_SOCKET,
        "scenario": str(SCENARIO),
        "dask_scheduler": dask_scheduler,
    }


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without the developer's VELOFLUX_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VELOFLUX_")}
    return {**env, **extra}


def veloflux(files: dict[str, str], command: str, **env: str) -> CliResult:
    """Run ``veloflux-agent COMMAND`` (placeholders filled in from ``files``)."""
    args = [word.format(**files) for word in shlex.split(command)]
    return run_cli(*args, env=clean_environment(**env), timeout=30)


def assert_fails_cleanly(
    result: CliResult, code: int, names: tuple[str, ...], files: dict[str, str]
) -> None:
    """No traceback; the documented exit code; a message on stderr naming each of
    ``names``; every error said once."""
    shown = f"exit {result.code}\n--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    output = result.stdout + result.stderr
    for sign in TRACEBACK_SIGNS:
        assert not sign.search(output), f"a traceback ({sign.pattern}):\n{shown}"
    assert result.code == code, f"expected exit {code}:\n{shown}"
    assert result.stderr.strip(), f"nothing on stderr:\n{shown}"
    for name in names:
        assert name.format(**files) in result.stderr, f"stderr does not name {name!r}:\n{shown}"
    # Lines with a word in them: a YAML error's ``^`` under each quoted line is no message.
    lines = Counter(line.strip() for line in result.stderr.splitlines() if WORD.search(line))
    repeated = [line for line, n in lines.items() if n > 1]
    assert not repeated, f"said more than once: {repeated}\n{shown}"
    for line in lines:
        if line.lower().startswith("error:"):
            message = line.split(":", 1)[1].strip()
            assert output.count(message) == 1, f"said more than once: {message!r}\n{shown}"


def case(command: str, code: int, *names: str, id: str) -> Any:  # a pytest ParameterSet
    return pytest.param(command, code, names, id=id)


# --- the list of commands --------------------------------------------------------------


def leaf_commands(group: click.Group, prefix: str = "") -> Iterator[str]:
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from leaf_commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}"


def test_every_command_has_its_bad_input_cases() -> None:
    """The cases below cover the commands the CLI has: a new one needs its own."""
    assert set(leaf_commands(main)) == set(COMMANDS)
    groups = {name for name, c in main.commands.items() if isinstance(c, click.Group)}
    assert groups == {g for g in GROUPS if g}


# --- usage errors: click's, exit 2 -----------------------------------------------------

UNKNOWN = [
    *(
        case(f"{template} --bogus", USAGE, "--bogus", id=f"{name}-unknown-flag")
        for name, template in COMMANDS.items()
    ),
    *(case(f"{g} --bogus", USAGE, "--bogus", id=f"{g or 'group'}-unknown-flag") for g in GROUPS),
    *(
        case(f"{g} frobnicate", USAGE, "frobnicate", id=f"{g or 'group'}-unknown-command")
        for g in GROUPS
    ),
]

MISSING_VALUE = [
    case("--log-level", USAGE, "--log-level", id="group-log-level-no-value"),
    case("check-config -c", USAGE, "-c", id="check-config-config-no-value"),
    case("dry-run -c {good} --output", USAGE, "--output", id="dry-run-output-no-value"),
    case("apply -c {good} --output", USAGE, "--output", id="apply-output-no-value"),
    case("revert -c {good} --reason", USAGE, "--reason", id="revert-reason-no-value"),
    case("record -c {good} --duration", USAGE, "--duration", id="record-duration-no-value"),
    case("train -c {good} --since", USAGE, "--since", id="train-since-no-value"),
    case("model list -c {good} --output", USAGE, "--output", id="model-list-output-no-value"),
    case("model show -c", USAGE, "-c", id="model-show-config-no-value"),
    case(
        "model promote -c {good} v1 --reason", USAGE, "--reason", id="model-promote-reason-no-value"
    ),
    case("model promote -c {good}", USAGE, "VERSION", id="model-promote-version-no-value"),
    case(
        "model rollback -c {good} --reason", USAGE, "--reason", id="model-rollback-reason-no-value"
    ),
    case("run -c {good} --log-format", USAGE, "--log-format", id="run-log-format-no-value"),
    case("override set -c {good} app/s1 20 --ttl", USAGE, "--ttl", id="override-set-ttl-no-value"),
    case("override set -c {good} app/s1", USAGE, "WEIGHT", id="override-set-weight-no-value"),
    case("override set -c {good}", USAGE, "BACKEND/SERVER", id="override-set-server-no-value"),
    case("override clear -c", USAGE, "-c", id="override-clear-config-no-value"),
    case("pause -c {good} --reason", USAGE, "--reason", id="pause-reason-no-value"),
    case("resume -c", USAGE, "-c", id="resume-config-no-value"),
    case("status -c {good} --output", USAGE, "--output", id="status-output-no-value"),
    case(
        "simulate {scenario} --dispatcher", USAGE, "--dispatcher", id="simulate-dispatcher-no-value"
    ),
    case("simulate", USAGE, "SCENARIO.yaml", id="simulate-scenario-no-value"),
    case("render-envoy -c {good} --out", USAGE, "--out", id="render-envoy-out-no-value"),
    case("render-envoy -c {good}", USAGE, "--out", id="render-envoy-no-out-no-value"),
    case("history export -c {good} --out", USAGE, "--out", id="history-export-out-no-value"),
    case("history export -c {good}", USAGE, "--out", id="history-export-no-out"),
]

# A flag's value the command cannot use is a usage error, as click makes it for a
# choice or a range and ``duration_option`` for ``train --since``: exit 2, the flag named.
BAD_VALUES = [
    case("check-config -c {good} --online=yes", USAGE, "--online", id="online-with-a-value"),
    case(
        "override set -c {good} app/s1 20 --ttl forever",
        USAGE,
        "--ttl",
        "forever",
        id="ttl-forever",
    ),
    case(
        "record -c {good} --duration soon",
        USAGE,
        "--duration",
        "soon",
        id="duration-soon",
    ),
    case(
        "record -c {good} --duration -5s",
        USAGE,
        "--duration",
        "-5s",
        id="duration-minus-5s",
    ),
    case("train -c {good} --since yesterday", USAGE, "--since", "yesterday", id="since-garbage"),
    case(
        "train -c {prom} --from-prometheus --since yesterday",
        USAGE,
        "--since",
        "yesterday",
        id="since-garbage-prometheus",
    ),
    case("train -c {prom} --from-prometheus --step -5s", USAGE, "--step", id="step-negative"),
    case("train -c {good} --step 15s", USAGE, "--from-prometheus", id="step-without-prometheus"),
    case("forecast -c {good} --horizon 2d", USAGE, "--horizon", "1d", id="forecast-horizon-long"),
    case("forecast -c {good} --horizon soon", USAGE, "--horizon", id="forecast-horizon-garbage"),
    case(
        "forecast -c {good} --horizon 5s", USAGE, "--horizon", "step", id="forecast-horizon-short"
    ),
    case("train -c {good} --dask", USAGE, "--dask", id="train-dask-no-value"),
    case("train -c {good} --dask localhost", USAGE, "--dask", "tcp://", id="train-dask-garbage"),
    case(
        "train -c {prom} --from-prometheus --dask tcp://127.0.0.1:9",
        USAGE,
        "--dask",
        "Prometheus",
        id="train-dask-with-prometheus",
    ),
    case("train -c {good} --parquet {tmp}/none", USAGE, "--parquet", id="train-parquet-missing"),
    case(  # a zero duration is refused before anything else is asked of it
        "train -c {good} --since 0s",
        USAGE,
        "--since",
        id="since-0s-without-prometheus",
    ),
    case(
        "train -c {prom} --from-prometheus --step 0s",
        USAGE,
        "--step",
        id="step-0s",
    ),
    *(
        case(f"{COMMANDS[c]} -c {{good}} --output xml", USAGE, "--output", "xml", id=f"{c}-xml")
        for c in ("dry-run", "apply", "revert", "train", "model list", "status")
    ),
    case("simulate {scenario} --output xml", USAGE, "--output", "xml", id="simulate-xml"),
    case(
        "history export -c {good} --out {tmp}/x --format csv",
        USAGE,
        "--format",
        "csv",
        id="history-export-csv",
    ),
    case(
        "history export -c {good} --out {tmp}/x --period week",
        USAGE,
        "--period",
        "week",
        id="history-export-week",
    ),
    case(
        "history export -c {good} --out {tmp}/x --since soon",
        USAGE,
        "--since",
        "soon",
        id="history-export-since-soon",
    ),
    case("simulate {scenario} --seeds 0", USAGE, "--seeds", id="simulate-seeds-0"),
    case("simulate {scenario} --seeds many", USAGE, "--seeds", "many", id="simulate-seeds-many"),
    case(  # exit 1, as simulate has always refused an unknown name (test_sim_strategies)
        "simulate {scenario} --dispatcher fastest",
        CONFIG,
        "--dispatcher",
        "fastest",
        id="simulate-dispatcher-fastest",
    ),
    case(  # exit 1, as simulate has always refused an unknown name (test_sim_strategies)
        "simulate {scenario} --strategy magic",
        CONFIG,
        "--strategy",
        "magic",
        id="simulate-strategy-magic",
    ),
    case("simulate {tmp}", USAGE, "is a directory", id="simulate-scenario-directory"),
    case("--log-level LOUD check-config -c {good}", USAGE, "LOUD", id="log-level-loud"),
    case("run -c {good} --log-level LOUD", USAGE, "--log-level", "LOUD", id="run-log-level"),
    case("run -c {good} --log-format xml", USAGE, "--log-format", "xml", id="run-log-format"),
]


@pytest.mark.parametrize(("command", "code", "names"), UNKNOWN + MISSING_VALUE + BAD_VALUES)
def test_a_usage_error_is_said_once_with_exit_2(
    files: dict[str, str], command: str, code: int, names: tuple[str, ...]
) -> None:
    assert_fails_cleanly(veloflux(files, command), code, names, files)


# --- a bad config file: exit 1, for every command that reads one -----------------------

BAD_CONFIGS = [
    pytest.param("missing", ("{missing}",), id="missing"),
    pytest.param("not_yaml", ("not-yaml.yaml", "YAML syntax error"), id="not-yaml"),
    pytest.param(
        "binary",
        ("binary.yaml",),
        id="binary",
    ),
    pytest.param("interval", ("interval", "fast"), id="interval-fast"),
]


@pytest.mark.parametrize(("kind", "names"), BAD_CONFIGS)
@pytest.mark.parametrize("command", list(WITH_CONFIG))
def test_a_bad_config_file_is_a_configuration_error(
    files: dict[str, str], command: str, kind: str, names: tuple[str, ...]
) -> None:
    result = veloflux(files, f"{WITH_CONFIG[command]} -c {{{kind}}}")
    assert_fails_cleanly(result, CONFIG, names, files)


# --- other refusals, exit 1 ------------------------------------------------------------

REFUSED = [
    # README: the operator commands exit 1 for a bad weight, as the daemon refuses one.
    case("override set -c {good} app/s1 999", CONFIG, "WEIGHT", "999", id="weight-999"),
    case("override set -c {good} app/s1 -- -1", CONFIG, "WEIGHT", "-1", id="weight-minus-1"),
    case(
        "override set -c {good} app/s1 -1",
        CONFIG,
        "WEIGHT",
        "-1",
        id="weight-minus-1-as-typed",
    ),
    case("override set -c {good} app/s1 abc", CONFIG, "WEIGHT", "abc", id="weight-abc"),
    case("check-config -c {tmp}", CONFIG, "{tmp}", "directory", id="config-is-a-directory"),
    case("check-config -c {haproxy_cfg}", CONFIG, "haproxy-cfg.yaml", id="config-not-a-mapping"),
    case("check-config -c {misspelt}", CONFIG, "polcy", id="config-unknown-key"),
    case("status -c {listen}", CONFIG, "api.listen", id="status-listen-garbage"),
    case("pause -c {token}", CONFIG, "api.token_file", "no-such-token", id="pause-no-token-file"),
    case("model show -c {good} v1", CONFIG, "v1", id="model-show-unknown"),
    case("model show -c {good}", CONFIG, "no model", id="model-show-none"),
    case("model promote -c {good} v1", CONFIG, "v1", id="model-promote-unknown"),
    case("model rollback -c {good}", CONFIG, "roll back", id="model-rollback-nothing"),
    case("train -c {good}", CONFIG, "record", id="train-no-history"),
    case("forecast -c {good}", CONFIG, "ai.history_path", "record", id="forecast-no-history"),
    case("train -c {good} --parquet {tmp}", CONFIG, "no Parquet files", id="train-parquet-empty"),
    case("check-config -c {dask_tls}", CONFIG, "ai.dask", "tls_ca_file", id="dask-tls-no-files"),
    case(
        "history export -c {good} --out {tmp}/x",
        CONFIG,
        "ai.history_path",
        "no journal",
        id="history-export-no-journal",
    ),
    case("train -c {good} --from-prometheus", CONFIG, "prometheus", id="train-no-prometheus"),
    case("simulate {tmp}/no-such.yaml", CONFIG, "{tmp}/no-such.yaml", id="simulate-missing"),
    case(
        "simulate {scenario_not_yaml}",
        CONFIG,
        "scenario-not-yaml.yaml",
        "YAML syntax error",
        id="simulate-not-yaml",
    ),
    case("simulate {good}", CONFIG, "good.yaml", "servers", id="simulate-not-a-scenario"),
    case("render-envoy -c {good} --out {tmp}/out", CONFIG, "envoy", id="render-envoy-no-envoy"),
    case("render-envoy -c {envoy} --out {a_file}", CONFIG, "{a_file}", id="render-envoy-out-file"),
]


@pytest.mark.parametrize(("command", "code", "names"), REFUSED)
def test_a_refused_request_is_said_once_with_exit_1(
    files: dict[str, str], command: str, code: int, names: tuple[str, ...]
) -> None:
    assert_fails_cleanly(veloflux(files, command), code, names, files)


# --- bad environment variables ---------------------------------------------------------

BAD_ENVIRONMENT = [
    pytest.param({"VELOFLUX_LOG_LEVEL": "LOUD"}, USAGE, ("--log-level", "LOUD"), id="log-level"),
    pytest.param({"VELOFLUX_INTERVAL": "fast"}, CONFIG, ("$VELOFLUX_INTERVAL",), id="interval"),
    pytest.param(
        {"VELOFLUX_POLCY__MAX_STEP_RATIO": "0.3"},
        CONFIG,
        ("VELOFLUX_POLCY__MAX_STEP_RATIO", "policy"),
        id="misspelt-section",
    ),
    pytest.param(
        {"VELOFLUX_CONFIG": "/nonexistent.yaml"}, CONFIG, ("/nonexistent.yaml",), id="config"
    ),
]


@pytest.mark.parametrize(("env", "code", "names"), BAD_ENVIRONMENT)
@pytest.mark.parametrize("command", ["check-config", "dry-run", "run", "status", "model list"])
def test_a_bad_environment_variable_is_named(
    files: dict[str, str], command: str, env: dict[str, str], code: int, names: tuple[str, ...]
) -> None:
    config = "" if "VELOFLUX_CONFIG" in env else " -c {good}"
    result = veloflux(files, f"{WITH_CONFIG[command]}{config}", **env)
    assert_fails_cleanly(result, code, names, files)


# --- nothing at the other end: exit 2, the address named -------------------------------

UNREACHED = [
    case("check-config -c {good} --online", UNREACHABLE, "{socket}", id="online-haproxy"),
    case("check-config -c {envoy} --online", UNREACHABLE, "Envoy admin", id="online-envoy"),
    case("dry-run -c {good}", UNREACHABLE, "{socket}", id="dry-run-haproxy"),
    case("dry-run -c {good} --output json", UNREACHABLE, "{socket}", id="dry-run-json-haproxy"),
    case("apply -c {good}", UNREACHABLE, "{socket}", id="apply-haproxy"),
    case("revert -c {good}", UNREACHABLE, "{socket}", id="revert-haproxy"),
    case(
        "record -c {good} --duration 1s",
        UNREACHABLE,
        "{socket}",
        id="record-haproxy",
    ),
    case("apply -c {envoy}", UNREACHABLE, "Envoy admin", id="apply-envoy"),
    case("train -c {prom} --from-prometheus", UNREACHABLE, "Prometheus", id="train-prometheus"),
    case(
        "train -c {dask} --dask {dask_scheduler} --parquet {tmp}",
        UNREACHABLE,
        "Dask scheduler",
        "{dask_scheduler}",
        id="train-dask-unreachable",
    ),
    case("status -c {good}", UNREACHABLE, "{api}", id="status-no-daemon"),
    case("pause -c {good}", UNREACHABLE, "{api}", id="pause-no-daemon"),
    case("resume -c {good}", UNREACHABLE, "{api}", id="resume-no-daemon"),
    case("override set -c {good} app/s1 20", UNREACHABLE, "{api}", id="override-set-no-daemon"),
    case("override clear -c {good} app/s1", UNREACHABLE, "{api}", id="override-clear-no-daemon"),
    case("override clear -c {good}", UNREACHABLE, "{api}", id="override-clear-all-no-daemon"),
]


@pytest.mark.parametrize(("command", "code", "names"), UNREACHED)
def test_an_unreachable_proxy_or_daemon_is_named_with_exit_2(
    files: dict[str, str], command: str, code: int, names: tuple[str, ...]
) -> None:
    assert_fails_cleanly(veloflux(files, command), code, names, files)


def test_run_on_a_taken_address_is_a_configuration_error(
    files: dict[str, str], tmp_path: Path
) -> None:
    """``run`` where something else already listens on ``api.listen``."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "taken.yaml"
        config.write_text(config_text(tmp_path, port), encoding="utf-8")
        result = veloflux(files, f"run -c {config}")
    assert_fails_cleanly(result, CONFIG, ("api.listen", f"127.0.0.1:{port}"), files)


# --- a backend HAProxy does not have: exit 1 (the one case that needs a HAProxy) -------


@pytest.mark.parametrize("command", ["check-config --online", "dry-run", "apply", "revert"])
def test_a_backend_haproxy_lacks_is_a_configuration_error(
    haproxy: HAProxyProcess, files: dict[str, str], tmp_path: Path, command: str
) -> None:
    """README: exit 1 for a backend in ``haproxy.backends`` that HAProxy does not have."""
    text = config_text(tmp_path, int(files["api"].rpartition(":")[2]))
    config = tmp_path / "typo.yaml"
    config.write_text(
        text.replace(DEAD_SOCKET, haproxy.admin_socket).replace(
            "  timeout: 2s\n", "  timeout: 2s\n  backends: [app, appp]\n"
        ),
        encoding="utf-8",
    )
    result = veloflux(files, f"{command} -c {config}")
    assert_fails_cleanly(result, CONFIG, ("haproxy.backends", "appp"), files)
