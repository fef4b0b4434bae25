"""The shipped example files stay valid: operators copy them first."""

from __future__ import annotations

import subprocess
from pathlib import Path

from veloflux.config.load import load_config
from veloflux.config.schema import Config, HAProxySection

ROOT = Path(__file__).resolve().parents[2]


def haproxy_of(config: Config) -> HAProxySection:
    """The config's HAProxy section, which these configs always have."""
    assert config.haproxy is not None
    return config.haproxy


def test_example_agent_config_is_valid() -> None:
    config = load_config(ROOT / "haproxy" / "veloflux.yaml", environ={})
    assert haproxy_of(config).backends == ("app",)
    assert config.interval_seconds == 10


def test_example_haproxy_config_is_valid() -> None:
    check = subprocess.run(
        ["haproxy", "-c", "-f", str(ROOT / "haproxy" / "haproxy.cfg")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert "level admin" in (ROOT / "haproxy" / "haproxy.cfg").read_text()


def test_example_envoy_agent_config_is_valid() -> None:
    config = load_config(ROOT / "envoy" / "veloflux.yaml", environ={})
    assert config.envoy is not None
    assert [c.name for c in config.envoy.clusters] == ["app"]


def test_example_prometheus_section_is_valid_once_uncommented(tmp_path: Path) -> None:
    text = (ROOT / "haproxy" / "veloflux.yaml").read_text()
    block = text[text.index("# prometheus:") :]
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") else line for line in block.splitlines()
    )
    config_path = tmp_path / "veloflux.yaml"
    config_path.write_text(text[: text.index("# prometheus:")] + uncommented + "\n")
    config = load_config(config_path, environ={})
    prom = config.prometheus
    assert prom is not None
    assert set(prom.features) == {"retries_1m", "cpu"}
    assert prom.instance_map == {"10.0.0.5:9100": "app/s1"}
    assert config.capacity.utilization_feature == "cpu"  # the capacity rung's example


def test_example_prometheus_scrape_config_is_valid(tmp_path: Path) -> None:
    """The compose stack's Prometheus config, with its rules file where the compose file
    mounts it from (promtool checks the rules it names too)."""
    text = (ROOT / "integration" / "prometheus.yml").read_text(encoding="utf-8")
    rules = ROOT / "integration" / "prometheus"
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace("/etc/prometheus/rules/", f"{rules}/"), encoding="utf-8")
    check = subprocess.run(
        ["promtool", "check", "config", str(config)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 1 rule files found" in check.stdout + check.stderr
