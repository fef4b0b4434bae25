"""EDS templates from an operator's directory: every way one can fail is a clear EdsError.

An adapted template is code the agent did not ship. A variable it names but is not
given, a syntax error, a missing or unreadable file, or a document that does not say
what was planned must each stop the write with the template's path in the message;
the sink's side (counted, last good file kept) is checked against a real Envoy in
tests/integration/test_envoy.py.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from veloflux.envoy.eds import EdsError, Endpoint, render_cds, render_eds

ENDPOINTS = [Endpoint("127.0.0.1", 8081, 3), Endpoint("127.0.0.1", 8082, 1)]
SHIPPED = files("veloflux.templates").joinpath("envoy/eds.yaml.j2").read_text(encoding="utf-8")

BLOCK_YAML = """\
version_info: "{{ version }}"
resources:
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: {{ cluster_name }}
  endpoints:
  - lb_endpoints:
{%- for ep in endpoints %}
    - endpoint: {address: {socket_address: {address: {{ ep.address }}, port_value: {{ ep.port }}}}}
      load_balancing_weight: {{ ep.weight }}
{%- endfor %}
"""


def templates(tmp_path: Path, eds: str | None) -> Path:
    directory = tmp_path / "templates"
    (directory / "envoy").mkdir(parents=True)
    if eds is not None:
        (directory / "envoy" / "eds.yaml.j2").write_text(eds, encoding="utf-8")
    return directory


def test_an_adapted_template_in_block_yaml_is_rendered_and_checked(tmp_path: Path) -> None:
    text = render_eds("app", ENDPOINTS, "4", templates(tmp_path, BLOCK_YAML))
    (assignment,) = yaml.safe_load(text)["resources"]
    weights = [e["load_balancing_weight"] for e in assignment["endpoints"][0]["lb_endpoints"]]
    assert weights == [3, 1]


def test_the_shipped_template_is_the_default(tmp_path: Path) -> None:
    assert render_eds("app", ENDPOINTS, "4") == render_eds(
        "app", ENDPOINTS, "4", templates(tmp_path, SHIPPED)
    )


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            SHIPPED.replace("{{ version | tojson }}", "{{ release | tojson }}"),
            "'release' is undefined",
        ),
        (SHIPPED.replace("{%- endfor %}", ""), r"line \d+: Unexpected end of template"),
        (None, "no such file"),
        (
            SHIPPED.replace("{{ ep.weight }}", "1"),
            r"the file's weights \[1, 1\] are not the planned",
        ),
        (
            SHIPPED.replace('"cluster_name": {{ cluster_name | tojson }}', '"cluster_name": "x"'),
            "is 'x'",
        ),
        ("resources: [", "not YAML"),
        (SHIPPED.replace("{{ ep.port }}", "{{ ep.port // 0 }}"), "ZeroDivisionError"),
    ],
)
def test_a_broken_template_is_an_eds_error_naming_it(
    tmp_path: Path, template: str | None, message: str
) -> None:
    directory = templates(tmp_path, template)
    with pytest.raises(EdsError, match=message) as raised:
        render_eds("app", ENDPOINTS, "1", directory)
    if "template" in str(raised.value):
        assert str(directory / "envoy" / "eds.yaml.j2") in str(raised.value)


def test_a_template_that_is_not_text_is_an_eds_error(tmp_path: Path) -> None:
    directory = templates(tmp_path, None)
    (directory / "envoy" / "eds.yaml.j2").write_bytes(b"\xff\xfe{{ x }}")
    with pytest.raises(EdsError, match="unreadable"):
        render_eds("app", ENDPOINTS, "1", directory)


def test_the_cds_template_comes_from_the_same_directory(tmp_path: Path) -> None:
    directory = templates(tmp_path, SHIPPED)
    with pytest.raises(EdsError, match=r"envoy/cds\.yaml\.j2: no such file"):
        render_cds(tmp_path / "eds", ["app"], templates_dir=directory)
    (directory / "envoy" / "cds.yaml.j2").write_text("resources: {{ nothing }}\n")
    with pytest.raises(EdsError, match="'nothing' is undefined"):
        render_cds(tmp_path / "eds", ["app"], templates_dir=directory)
    (directory / "envoy" / "cds.yaml.j2").write_text("just text\n")
    with pytest.raises(EdsError, match="no 'resources' list"):
        render_cds(tmp_path / "eds", ["app"], templates_dir=directory)
