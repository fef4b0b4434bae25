"""EDS files: rendered from the shipped template, checked before writing, swapped atomically."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from veloflux.envoy.eds import (
    EdsError,
    Endpoint,
    eds_path,
    render_cds,
    render_eds,
    validate_eds,
    write_eds,
)

ENDPOINTS = [Endpoint("127.0.0.1", 8081, 3), Endpoint("127.0.0.1", 8082, 1, "DRAINING")]


def test_the_rendered_document_is_one_cluster_load_assignment() -> None:
    text = render_eds("app", ENDPOINTS, version="7")
    document = yaml.safe_load(text)
    assert document["version_info"] == "7"
    (assignment,) = document["resources"]
    assert assignment["@type"].endswith("ClusterLoadAssignment")
    assert assignment["cluster_name"] == "app"
    (group,) = assignment["endpoints"]
    first, second = group["lb_endpoints"]
    assert first["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 8081,
    }
    assert (first["load_balancing_weight"], second["load_balancing_weight"]) == (3, 1)
    assert "health_status" not in first
    assert second["health_status"] == "DRAINING"


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        (Endpoint("127.0.0.1", 8081, 0), "weight 0 is outside"),
        (Endpoint("127.0.0.1", 8081, 2**32), "is outside"),
        (Endpoint("127.0.0.1", 0, 1), "port 0"),
        (Endpoint("127.0.0.1", 70000, 1), "port 70000"),
        (Endpoint("bad host;rm", 8081, 1), "neither an IP nor a host name"),
        (Endpoint("127.0.0.1", 8081, 1, "SICK"), "health 'SICK'"),
    ],
)
def test_a_bad_endpoint_is_refused_before_anything_is_written(
    tmp_path: Path, endpoint: Endpoint, message: str
) -> None:
    with pytest.raises(EdsError, match=message):
        render_eds("app", [ENDPOINTS[0], endpoint], version="1")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_assignment_is_refused_never_all_drained() -> None:
    with pytest.raises(EdsError, match="never drain all"):
        render_eds("app", [], version="1")


def test_validation_catches_a_document_that_says_something_else() -> None:
    text = render_eds("app", ENDPOINTS, version="1")
    with pytest.raises(EdsError, match="cluster_name"):
        validate_eds(
            text.replace('"cluster_name": "app"', '"cluster_name": "other"'), "app", [3, 1]
        )
    with pytest.raises(EdsError, match="not the planned ones"):
        validate_eds(text, "app", [3, 2])
    with pytest.raises(EdsError, match="not YAML"):
        validate_eds("resources: [", "app", [3, 1])


def test_a_block_yaml_document_from_an_adapted_template_is_parsed_as_yaml() -> None:
    block = yaml.safe_dump(yaml.safe_load(render_eds("app", ENDPOINTS, version="1")))
    assert not block.lstrip().startswith("{")
    validate_eds(block, "app", [3, 1])  # no error: the same document, in block style


def test_the_file_is_replaced_atomically_at_its_fixed_path(tmp_path: Path) -> None:
    first = write_eds(tmp_path, "app", render_eds("app", ENDPOINTS, version="1"))
    assert first == eds_path(tmp_path, "app") == tmp_path / "app.yaml"
    inode = first.stat().st_ino
    write_eds(tmp_path, "app", render_eds("app", ENDPOINTS, version="2"))
    assert first.stat().st_ino != inode  # a new file moved into place, not an in-place write
    assert yaml.safe_load(first.read_text())["version_info"] == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["app.yaml"]  # no temp file left


def test_an_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(EdsError, match="cannot write"):
        write_eds(blocked, "app", render_eds("app", ENDPOINTS, version="1"))


def test_a_cluster_name_cannot_escape_the_directory(tmp_path: Path) -> None:
    with pytest.raises(EdsError, match="not safe"):
        eds_path(tmp_path, "../etc/passwd")


def test_the_cds_file_declares_each_cluster_from_its_eds_file(tmp_path: Path) -> None:
    document = yaml.safe_load(render_cds(tmp_path, ["app", "api"]))
    app, api = document["resources"]
    assert (app["name"], app["type"], api["name"]) == ("app", "EDS", "api")
    source = app["eds_cluster_config"]["eds_config"]["path_config_source"]
    assert source["path"] == str(tmp_path / "app.yaml")
    assert source["watched_directory"]["path"] == str(tmp_path)
    with pytest.raises(EdsError, match="not safe"):
        render_cds(tmp_path, ["a/b"])
