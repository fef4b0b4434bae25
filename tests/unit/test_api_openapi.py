"""``openapi.json`` describes the API the server really has: every route, every method,
nothing else, and the same routes as docs/operations.md's table.

``tests/integration/test_api_fuzz.py`` checks the answers of a real daemon against the
document; this checks, without a proxy, that the document and the route table name the
same things, so that a route added without its description (or the reverse) fails here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_api import TOKEN, Harness
from veloflux import __version__
from veloflux.daemon.api.server import OPENAPI_PATH

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT_PATH = ROOT / "agent" / "veloflux" / "daemon" / "api" / "openapi.json"
DOCUMENT: dict[str, Any] = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
HTTP_METHODS = ("get", "head", "post", "put", "patch", "delete", "options", "trace")
WRITES = ("post", "delete")


def documented() -> dict[str, set[str]]:
    """Each documented path (a template filled in) and its methods, upper case."""
    return {
        path.replace("{backend}", "web").replace("{server}", "a"): {
            method.upper() for method in item if method in HTTP_METHODS
        }
        for path, item in DOCUMENT["paths"].items()
    }


@pytest.fixture
def api() -> Iterator[Harness]:
    harness = Harness(TOKEN)
    yield harness
    harness.server.stop()


def test_the_document_is_openapi_3_1_of_this_version() -> None:
    assert DOCUMENT["openapi"].startswith("3.1.")
    assert DOCUMENT["info"]["version"] == __version__


def test_the_server_serves_the_packaged_document(api: Harness) -> None:
    status, response, body = api.raw("GET", OPENAPI_PATH)
    assert status == 200
    assert response.getheader("Content-Type") == "application/json"
    assert body == DOCUMENT_PATH.read_bytes()


def test_every_route_of_the_server_is_documented_and_nothing_else(api: Harness) -> None:
    routes = api.server._server.api._routes  # the route table is what the document must match
    served = {
        path: set(methods) | ({"HEAD"} if "GET" in methods else set())
        for path, methods in routes.items()
    }
    served["/api/v1/overrides/web/a"] = {"DELETE"}  # the one route by prefix
    assert documented() == served


@pytest.mark.parametrize("path", sorted(documented()))
def test_each_path_allows_exactly_its_documented_methods(api: Harness, path: str) -> None:
    status, response, _ = api.raw("OPTIONS", path)
    assert status == 405
    assert set(response.getheader("Allow", "").split(", ")) == documented()[path]


def test_every_write_needs_the_bearer_token_and_no_read_does() -> None:
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            secured = operation.get("security") == [{"bearerToken": []}]
            assert secured == (method in WRITES), (method, path)
            if secured:
                assert {"401", "403"} <= set(operation["responses"]), (method, path)


def test_the_operations_guide_lists_the_same_routes() -> None:
    """docs/operations.md's API table: each row's method and path is in the document."""
    guide = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = guide.split("## HTTP API", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (GET|POST|DELETE) \| `([^`]+)` \|", section, flags=re.MULTILINE)
    assert len(rows) >= 10
    paths = documented()
    for method, path in rows:
        filled = path.replace("BACKEND/SERVER", "web/a")
        assert method in paths.get(filled, set()), (method, path)
