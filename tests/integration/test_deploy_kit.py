"""The deployment kit stays valid: the systemd unit and the Kubernetes manifest.

The unit (integration/systemd/veloflux-agent.service) goes through ``systemd-analyze
verify``, with its ExecStart pointed at this virtualenv's ``veloflux-agent`` since verify
refuses a command that does not exist; verify only warns, exit code 0, about an unknown
key or a value it cannot parse, so every line it prints about the unit counts as a
problem, and broken copies show that the check catches each kind. ``systemd-analyze
security --offline`` scores its sandbox. The manifest
(integration/kubernetes/veloflux-sidecar.yaml) is parsed, its pieces checked against
each other (the socket both containers share, the paths the agent's config names, the
probes and ports), its agent config loaded by this project's own loader
(``check-config``), its haproxy.cfg checked by ``haproxy -c`` and then run, on loopback,
with the agent's ``check-config --online`` against it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from integration.haproxy_proc import free_port
from tests.integration.helpers import CliResult, run_cli
from veloflux.config.load import load_config
from veloflux.config.schema import AISection, APISection, EnvoySection

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "integration" / "systemd" / "veloflux-agent.service"
MANIFEST = ROOT / "integration" / "kubernetes" / "veloflux-sidecar.yaml"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"

INSTALLED_AGENT = "/opt/veloflux/bin/veloflux-agent"  # the unit's ExecStart command
VENV_AGENT = Path(sys.executable).with_name("veloflux-agent")
MAX_EXPOSURE = 2.0  # systemd-analyze security's overall exposure, 0 (best) to 10

# --- systemd ---------------------------------------------------------------------------


def unit_directives(text: str) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values in order]}}``; comments and blank lines dropped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"a directive before any section: {line!r}"
        assert not line.endswith("\\"), f"a continued line: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def service() -> dict[str, list[str]]:
    return unit_directives(UNIT.read_text(encoding="utf-8"))["Service"]


def seconds(span: str) -> float:
    """A systemd time span of one unit: ``45s``, ``10min``."""
    match = re.fullmatch(r"(\d+)(s|min)", span)
    assert match, f"unexpected time span {span!r}"
    return int(match[1]) * (60 if match[2] == "min" else 1)


def unit_copy(directory: Path, text: str | None = None, agent: Path = VENV_AGENT) -> Path:
    """The unit (or ``text``) under ``directory``, its ExecStart command replaced by
    ``agent``: verify refuses a command that does not exist on this machine."""
    text = UNIT.read_text(encoding="utf-8") if text is None else text
    assert text.count(f"ExecStart={INSTALLED_AGENT} ") == 1
    path = directory / "veloflux-agent.service"
    path.write_text(text.replace(INSTALLED_AGENT, str(agent)), encoding="utf-8")
    return path


def verify_problems(unit: Path) -> list[str]:
    """What ``systemd-analyze verify`` says about ``unit``, plus its exit code if not 0.

    Lines about other units (the targets and haproxy.service it names, as this machine
    has them) are not this unit's problems and are left out."""
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
        check=False,
    )
    lines = (result.stdout + result.stderr).splitlines()
    problems = [line for line in lines if unit.name in line]
    if result.returncode != 0:
        problems.append(f"exit code {result.returncode}: {result.stderr.strip()}")
    return problems


def exposure(unit: Path) -> float:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match[1])


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    assert VENV_AGENT.is_file(), f"{VENV_AGENT}: install the project (pip install -e .)"
    assert verify_problems(unit_copy(tmp_path)) == []


@pytest.mark.parametrize(
    ("broken", "said"),
    [
        (("ProtectSystem=strict", "ProtectSytem=strict"), "Unknown key"),
        (("Restart=on-failure", "Restart=on-falure"), "Failed to parse"),
        (("[Service]", "[Servce]"), "Unknown section"),
    ],
    ids=["typo-in-a-key", "bad-value", "typo-in-a-section"],
)
def test_verify_catches_a_broken_unit(tmp_path: Path, broken: tuple[str, str], said: str) -> None:
    text = UNIT.read_text(encoding="utf-8")
    assert text.count(broken[0]) == 1
    problems = verify_problems(unit_copy(tmp_path, text.replace(broken[0], broken[1])))
    assert any(said in line for line in problems), problems


def test_verify_catches_a_command_that_does_not_exist(tmp_path: Path) -> None:
    problems = verify_problems(unit_copy(tmp_path, agent=tmp_path / "no" / "veloflux-agent"))
    assert any("is not executable" in line for line in problems), problems


def test_the_unit_runs_the_daemon_as_its_own_user_in_a_sandbox() -> None:
    sections = unit_directives(UNIT.read_text(encoding="utf-8"))
    assert set(sections) == {"Unit", "Service", "Install"}
    found = {key: values[-1] for key, values in sections["Service"].items()}
    expected = {
        "User": "veloflux",
        "Group": "veloflux",
        "SupplementaryGroups": "haproxy",  # the group of HAProxy's admin socket
        "StateDirectory": "veloflux",
        "ConfigurationDirectory": "veloflux",
        "ExecStart": f"{INSTALLED_AGENT} run -c /etc/veloflux/veloflux.yaml --log-format json",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "UMask": "0027",
        "CapabilityBoundingSet": "",
        "NoNewPrivileges": "true",
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "true",
        "PrivateDevices": "true",
        "ProtectKernelTunables": "true",
        "ProtectKernelModules": "true",
        "ProtectKernelLogs": "true",
        "ProtectControlGroups": "true",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces": "true",
        "LockPersonality": "true",
        "MemoryDenyWriteExecute": "true",
        "SystemCallArchitectures": "native",
    }
    assert {key: found.get(key) for key in expected} == expected
    assert sections["Service"]["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert int(found["LimitNOFILE"]) >= 1024
    assert seconds(found["RestartSec"]) >= 1
    # The socket is reached by its permission bits (SupplementaryGroups), not by making
    # any path writable: ProtectSystem=strict does not stop AF_UNIX connections.
    assert "ReadWritePaths" not in found
    # Stopping waits for the tick in progress, then up to 10 s for a retraining child:
    # give it more than an interval of the shipped example config plus that.
    example = load_config(ROOT / "haproxy" / "veloflux.yaml", environ={})
    assert seconds(found["TimeoutStopSec"]) > example.interval_seconds + 10
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_state_directory_holds_every_default_state_path() -> None:
    state = PurePosixPath("/var/lib") / service()["StateDirectory"][-1]
    defaults = [
        AISection.model_fields["history_path"].default,
        AISection.model_fields["model_dir"].default,
        AISection.model_fields["audit_log"].default,
        APISection.model_fields["state_path"].default,
        EnvoySection.model_fields["eds_dir"].default,
    ]
    assert all(PurePosixPath(path).is_relative_to(state) for path in defaults), defaults


def test_the_sandbox_scores_low_exposure_and_the_score_bites(tmp_path: Path) -> None:
    assert exposure(unit_copy(tmp_path)) <= MAX_EXPOSURE
    # The same unit with its hardening block cut out scores far worse.
    text = UNIT.read_text(encoding="utf-8")
    start = text.index("CapabilityBoundingSet=")
    end = text.index("MemoryDenyWriteExecute=true") + len("MemoryDenyWriteExecute=true")
    bare = tmp_path / "bare"
    bare.mkdir()
    assert exposure(unit_copy(bare, text[:start] + text[end:])) > MAX_EXPOSURE + 3


# --- Kubernetes ------------------------------------------------------------------------


def documents() -> list[dict[str, Any]]:
    loaded = list(yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8")))
    return [doc for doc in loaded if doc is not None]


def one(kind: str) -> dict[str, Any]:
    found = [doc for doc in documents() if doc["kind"] == kind]
    assert len(found) == 1, f"{len(found)} documents of kind {kind}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = one("Deployment")["spec"]["template"]["spec"]
    return spec


def container(name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in pod_spec()["containers"] if c["name"] == name]
    assert len(found) == 1, f"container {name}"
    return found[0]


def mount_path(container_name: str, volume: str) -> PurePosixPath:
    mounts = [m for m in container(container_name)["volumeMounts"] if m["name"] == volume]
    assert len(mounts) == 1, f"{container_name} mounts {volume} {len(mounts)} times"
    return PurePosixPath(mounts[0]["mountPath"])


def file_in(container_name: str, source: str, name: str, key: str) -> PurePosixPath:
    """Where ``container_name`` sees ``key`` of the ConfigMap or Secret ``name``
    (``source`` is ``configMap`` or ``secret``)."""
    ref = "name" if source == "configMap" else "secretName"
    for volume in pod_spec()["volumes"]:
        if source in volume and volume[source][ref] == name:
            for item in volume[source].get("items", []):
                if item["key"] == key:
                    return mount_path(container_name, volume["name"]) / str(item["path"])
    raise AssertionError(f"no {source} volume with {name}/{key}")


def config_map() -> dict[str, str]:
    data: dict[str, str] = one("ConfigMap")["data"]
    return data


def agent_config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(config_map()["veloflux.yaml"])
    return config


def socket_path() -> PurePosixPath:
    socket: str = agent_config()["haproxy"]["socket"]
    assert socket.startswith("unix:///")
    return PurePosixPath(socket.removeprefix("unix://"))


def stats_socket_line() -> list[str]:
    lines = [
        line.split()
        for line in config_map()["haproxy.cfg"].splitlines()
        if line.split()[:2] == ["stats", "socket"]
    ]
    assert len(lines) == 1, lines
    return lines[0]


def quantity(text: str) -> float:
    """A Kubernetes quantity: ``50m`` CPU, ``256Mi`` bytes, ``1`` core."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|M|G)?", str(text))
    assert match, f"unexpected quantity {text!r}"
    return float(match[1]) * (units[match[2]] if match[2] else 1)


def measured_peak_rss_bytes() -> float:
    """The daemon's peak RSS over 30 minutes, from docs/benchmarks.md."""
    for line in BENCHMARKS.read_text(encoding="utf-8").splitlines():
        if line.startswith("| daemon RSS at"):
            match = re.search(r"; (\d+) MB \|", line)
            assert match, line
            return int(match[1]) * 1e6
    raise AssertionError("docs/benchmarks.md has no daemon RSS row")


def clean_env() -> dict[str, str]:
    """This environment without VELOFLUX_* variables, which would override the file."""
    return {k: v for k, v in os.environ.items() if not k.startswith("VELOFLUX_")}


def agent_config_in(tmp_path: Path, socket: str | None = None) -> Path:
    """The ConfigMap's agent config with its machine paths moved under ``tmp_path``: the
    state volume's files, and the token file (a real token, as the Secret should hold)."""
    state_dir = mount_path("veloflux-agent", "state")
    tmp_path.mkdir(parents=True, exist_ok=True)
    token_file = tmp_path / "api-token"
    token_file.write_text(os.urandom(32).hex() + "\n", encoding="utf-8")
    token_file.chmod(0o440)  # the Secret's defaultMode
    (tmp_path / "state").mkdir()

    def moved(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: moved(v) for k, v in value.items()}
        if isinstance(value, str) and PurePosixPath(value).is_relative_to(state_dir):
            return str(tmp_path / "state" / PurePosixPath(value).relative_to(state_dir))
        return value

    config = moved(agent_config())
    config["api"]["token_file"] = str(token_file)
    if socket is not None:
        config["haproxy"]["socket"] = socket
    path = tmp_path / "veloflux.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_every_document_names_its_api_kind_and_name() -> None:
    docs = documents()
    for doc in docs:
        assert doc.get("apiVersion"), doc
        assert doc.get("kind"), doc
        assert doc.get("metadata", {}).get("name"), doc
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == ["ConfigMap", "Deployment", "PodMonitor", "Secret", "Service"]
    assert one("PodMonitor")["apiVersion"] == "monitoring.coreos.com/v1"
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert one("Service")["spec"]["selector"].items() <= labels.items()


def test_both_containers_share_the_socket_directory_and_its_group() -> None:
    assert {c["name"] for c in pod_spec()["containers"]} == {"haproxy", "veloflux-agent"}
    assert container("haproxy")["image"].startswith("haproxy:2.8.")  # pinned
    assert container("veloflux-agent")["image"] == "veloflux/agent:0.1.0"
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == "haproxy-socket")
    assert "emptyDir" in volume
    directory = mount_path("haproxy", "haproxy-socket")
    assert mount_path("veloflux-agent", "haproxy-socket") == directory
    assert socket_path().is_relative_to(directory)
    # HAProxy creates the very socket the agent's config names, at level admin, mode
    # 660, with the pod's fsGroup as its group (a supplementary group of both).
    words = stats_socket_line()
    assert PurePosixPath(words[2]) == socket_path()
    options = dict(zip(words[3::2], words[4::2], strict=False))
    assert options["level"] == "admin"
    assert options["mode"] == "660"
    assert int(options["gid"]) == pod_spec()["securityContext"]["fsGroup"]


def test_each_container_reads_its_config_where_it_looks_for_it() -> None:
    name = one("ConfigMap")["metadata"]["name"]
    haproxy_cfg = file_in("haproxy", "configMap", name, "haproxy.cfg")
    assert haproxy_cfg == PurePosixPath("/usr/local/etc/haproxy/haproxy.cfg")  # the image's
    agent = container("veloflux-agent")
    command = [*agent["command"], *agent["args"]]
    assert command[:2] == ["veloflux-agent", "run"]
    config_flag = command.index("-c")
    assert PurePosixPath(command[config_flag + 1]) == file_in(
        "veloflux-agent", "configMap", name, "veloflux.yaml"
    )
    secret = one("Secret")
    token = file_in("veloflux-agent", "secret", secret["metadata"]["name"], "api-token")
    assert "api-token" in secret["stringData"]
    assert PurePosixPath(agent_config()["api"]["token_file"]) == token
    # Every state file on the state volume.
    state = mount_path("veloflux-agent", "state")
    paths = [agent_config()["ai"][key] for key in ("history_path", "model_dir", "audit_log")]
    paths.append(agent_config()["api"]["state_path"])
    assert all(PurePosixPath(p).is_relative_to(state) for p in paths), paths


def test_the_probes_reach_the_agents_api_on_the_pod_ip() -> None:
    agent = container("veloflux-agent")
    host, _, port = agent_config()["api"]["listen"].rpartition(":")
    assert host == "0.0.0.0"  # the kubelet and Prometheus connect to the pod IP
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert int(port) == 9477
    assert 9477 in ports.values()

    def probe_target(probe: str) -> tuple[str, int]:
        get = agent[probe]["httpGet"]
        target = get["port"]
        return get["path"], ports[target] if isinstance(target, str) else target

    assert probe_target("livenessProbe") == ("/-/healthy", 9477)
    assert probe_target("readinessProbe") == ("/-/ready", 9477)


def test_every_container_runs_unprivileged_on_a_read_only_root() -> None:
    assert pod_spec()["securityContext"]["runAsNonRoot"] is True
    assert pod_spec()["automountServiceAccountToken"] is False
    for c in pod_spec()["containers"]:
        context = c["securityContext"]
        assert context["runAsUser"] != 0, c["name"]
        assert context["allowPrivilegeEscalation"] is False, c["name"]
        assert context["readOnlyRootFilesystem"] is True, c["name"]
        assert context["capabilities"]["drop"] == ["ALL"], c["name"]
    for volume in ("agent-config", "api-token"):
        mount = next(m for m in container("veloflux-agent")["volumeMounts"] if m["name"] == volume)
        assert mount["readOnly"] is True, volume


def test_the_agents_resources_cover_what_was_measured() -> None:
    resources = container("veloflux-agent")["resources"]
    requests, limits = resources["requests"], resources["limits"]
    assert quantity(requests["memory"]) >= measured_peak_rss_bytes()
    assert quantity(limits["memory"]) >= 4 * quantity(requests["memory"])  # retraining
    assert quantity(requests["cpu"]) > 0
    # Retraining runs ai.training_threads XGBoost threads in a child of this container.
    assert quantity(limits["cpu"]) >= agent_config()["ai"]["training_threads"]


def test_prometheus_finds_the_agent_by_annotation_or_pod_monitor() -> None:
    template = one("Deployment")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9477"
    assert annotations["prometheus.io/path"] == "/metrics"
    monitor = one("PodMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    ports = {
        p["name"]: (c["name"], p["containerPort"])
        for c in template["spec"]["containers"]
        for p in c["ports"]
    }
    scraped = {ports[e["port"]]: e["path"] for e in monitor["podMetricsEndpoints"]}
    assert scraped == {("veloflux-agent", 9477): "/metrics", ("haproxy", 8405): "/metrics"}


def test_the_agent_config_passes_check_config(tmp_path: Path) -> None:
    result = run_cli("check-config", "-c", agent_config_in(tmp_path), env=clean_env())
    assert result.code == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK"), result.stdout


def test_the_placeholder_token_is_refused(tmp_path: Path) -> None:
    config = agent_config_in(tmp_path)
    placeholder = one("Secret")["stringData"]["api-token"]
    (tmp_path / "api-token").write_text(placeholder, encoding="utf-8")
    result = run_cli("check-config", "-c", config, env=clean_env())
    assert result.code == 1, result.stdout + result.stderr
    assert "api.token_file" in result.stdout + result.stderr


def test_the_haproxy_cfg_passes_haproxy_check(tmp_path: Path) -> None:
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(config_map()["haproxy.cfg"], encoding="utf-8")
    check = subprocess.run(
        ["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "[WARNING]" not in check.stderr, check.stderr


@pytest.fixture
def pod_haproxy(tmp_path: Path) -> Iterator[Path]:
    """The ConfigMap's haproxy.cfg running for real, on loopback: its binds on free
    loopback ports, the socket in ``tmp_path`` (without the pod's group, which this
    machine's user need not have), DNS asked of a loopback port nobody answers on."""
    text = config_map()["haproxy.cfg"]
    socket = tmp_path / "admin.sock"
    rewrites = {
        str(socket_path()): str(socket),
        " gid 10001 ": " ",
        "bind :8405": f"bind 127.0.0.1:{free_port()}",
        "bind :8080": f"bind 127.0.0.1:{free_port()}",
        "parse-resolv-conf": f"nameserver nobody 127.0.0.1:{free_port()}",
    }
    for old, new in rewrites.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text, encoding="utf-8")
    log = (tmp_path / "haproxy.log").open("wb")
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while not socket.exists():
            assert proc.poll() is None, (tmp_path / "haproxy.log").read_text()
            if time.monotonic() > deadline:
                pytest.fail("HAProxy made no socket within 10 s")
            time.sleep(0.05)
        yield socket
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def test_the_agent_finds_what_it_manages_in_the_pods_haproxy(
    tmp_path: Path, pod_haproxy: Path
) -> None:
    config = agent_config_in(tmp_path / "agent", socket=f"unix://{pod_haproxy}")
    result: CliResult = run_cli("check-config", "--online", "-c", config, env=clean_env())
    assert result.code == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK (online: haproxy at"), result.stdout
