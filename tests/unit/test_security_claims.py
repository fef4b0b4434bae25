"""docs/security.md's claims that a unit test can prove, and the page's own honesty.

Each claim on that page names the test that proves it; the last test here fails when
a named test does not exist, so the page cannot cite a test that was renamed away.
Claims that need a real HAProxy or a real process are in
``tests/integration/test_security.py``.
"""

from __future__ import annotations

import ast
import errno
import hmac
import ipaddress
import os
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.unit.test_api import TOKEN, Harness
from tests.unit.test_config import NO_ENV, base, problems_of, write
from tests.unit.test_eds import ENDPOINTS
from veloflux.config.load import load_config, load_config_checked, validate_config
from veloflux.config.schema import APISection
from veloflux.daemon.api.fields import read_token
from veloflux.daemon.audit import Actor, AuditLog
from veloflux.envoy import admin as envoy_admin
from veloflux.envoy.eds import EdsError, render_eds, validate_eds, write_eds
from veloflux.errors import ConfigError
from veloflux.util.events import Events

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "agent" / "veloflux"
SECURITY_DOC = ROOT / "docs" / "security.md"

# --- nothing loads code from data ----------------------------------------------------------

# Modules that turn bytes into live objects (and so run code chosen by whoever wrote them).
FORBIDDEN_MODULES = frozenset(
    {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"}
)
FORBIDDEN_BUILTINS = frozenset({"eval", "exec", "compile", "__import__"})
UNSAFE_YAML = frozenset({"unsafe_load", "unsafe_load_all", "full_load", "full_load_all"})
SAFE_LOADERS = frozenset({"SafeLoader", "CSafeLoader"})
PICKLE_METHODS = frozenset({"read_pickle", "to_pickle"})  # pandas


def _loader_names(node: ast.AST) -> set[str]:
    """The ``...Loader`` names an expression mentions, as attributes or strings."""
    names: set[str] = set()
    for part in ast.walk(node):
        if isinstance(part, ast.Attribute) and part.attr.endswith("Loader"):
            names.add(part.attr)
        elif isinstance(part, ast.Name) and part.id.endswith("Loader"):
            names.add(part.id)
        elif isinstance(part, ast.Constant) and str(part.value).endswith("Loader"):
            names.add(str(part.value))
    return names


def _is_safe_loader(node: ast.AST, safe: set[str]) -> bool:
    if isinstance(node, ast.Name):
        return node.id in safe
    return isinstance(node, ast.Attribute) and node.attr in SAFE_LOADERS


def _safe_loaders(tree: ast.Module) -> set[str]:
    """Names this module binds to a safe YAML loader: ``class X(yaml.SafeLoader)``, or
    ``X = getattr(yaml, "CSafeLoader", yaml.SafeLoader)``."""
    safe = set(SAFE_LOADERS)
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            if node.bases and all(_is_safe_loader(b, safe) for b in node.bases):
                safe.add(node.name)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, mentioned = node.targets[0], _loader_names(node.value)
            if isinstance(target, ast.Name) and (
                _is_safe_loader(node.value, safe) or (mentioned and mentioned <= SAFE_LOADERS)
            ):
                safe.add(target.id)
    return safe


def unsafe_constructs(source: str) -> list[tuple[int, str]]:
    """Every place in ``source`` that could load code from data, as (line, what)."""
    tree = ast.parse(source)
    safe = _safe_loaders(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                (node.lineno, f"import {a.name}")
                for a in node.names
                if a.name.split(".")[0] in FORBIDDEN_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in FORBIDDEN_MODULES:
                found.append((node.lineno, f"from {node.module} import"))
        elif isinstance(node, ast.Call):
            found += [(node.lineno, what) for what in _unsafe_call(node, safe)]
    return sorted(found)


def _unsafe_call(call: ast.Call, safe_loaders: set[str]) -> Iterator[str]:
    func = call.func
    keywords = {k.arg: k.value for k in call.keywords if k.arg}
    allow_pickle = keywords.get("allow_pickle")
    if isinstance(allow_pickle, ast.Constant) and allow_pickle.value is True:
        yield "allow_pickle=True"
    if isinstance(func, ast.Name) and func.id in FORBIDDEN_BUILTINS:
        yield f"{func.id}()"
    regex = isinstance(func, ast.Attribute) and ast.unparse(func) == "re.compile"
    if isinstance(func, ast.Attribute) and func.attr in FORBIDDEN_BUILTINS | PICKLE_METHODS:
        yield from ([] if regex else [f".{func.attr}()"])
    if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)):
        return
    if func.value.id in ("os",) and func.attr in ("system", "popen"):
        yield f"os.{func.attr}()"
    if func.value.id == "subprocess":
        shell = keywords.get("shell")
        if not (shell is None or (isinstance(shell, ast.Constant) and shell.value is False)):
            yield "subprocess with shell"
    if func.value.id != "yaml":
        return
    if func.attr in UNSAFE_YAML:
        yield f"yaml.{func.attr}()"
    elif func.attr in ("load", "load_all"):
        loader = keywords.get("Loader", call.args[1] if len(call.args) > 1 else None)
        if loader is None or not _is_safe_loader(loader, safe_loaders):
            yield f"yaml.{func.attr}() without a safe loader"


def test_no_module_loads_code_from_data() -> None:
    """No pickle, marshal, shelve, dill, joblib, cloudpickle; no eval, exec or compile;
    YAML only through a safe loader; no shell. Whoever writes a model, a journal, a
    config or a reply gets data into VeloFlux, never code."""
    found = {
        f"{path.relative_to(ROOT)}:{line}": what
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, what in unsafe_constructs(path.read_text(encoding="utf-8"))
    }
    assert found == {}


@pytest.mark.parametrize(
    ("source", "what"),
    [
        ("import pickle", "import pickle"),
        ("import joblib as jl", "import joblib"),
        ("from marshal import loads", "from marshal import"),
        ("from dill.source import x", "from dill.source import"),
        ("import shelve", "import shelve"),
        ("import cloudpickle", "import cloudpickle"),
        ("eval('1')", "eval()"),
        ("exec('x = 1')", "exec()"),
        ("compile('1', 'f', 'eval')", "compile()"),
        ("__import__('os')", "__import__()"),
        ("import builtins\nbuiltins.eval('1')", ".eval()"),
        ("import pandas as pd\npd.read_pickle('f')", ".read_pickle()"),
        ("import numpy as np\nnp.load('f', allow_pickle=True)", "allow_pickle=True"),
        ("import yaml\nyaml.load(t)", "yaml.load() without a safe loader"),
        ("import yaml\nyaml.load(t, Loader=yaml.Loader)", "yaml.load() without a safe loader"),
        ("import yaml\nyaml.load(t, yaml.FullLoader)", "yaml.load() without a safe loader"),
        ("import yaml\nyaml.load_all(t, Loader=yaml.UnsafeLoader)", "yaml.load_all() without"),
        ("import yaml\nyaml.unsafe_load(t)", "yaml.unsafe_load()"),
        ("import yaml\nyaml.full_load(t)", "yaml.full_load()"),
        ("import yaml\nclass L(yaml.Loader): ...\nyaml.load(t, Loader=L)", "yaml.load() without"),
        ("import os\nos.system('ls')", "os.system()"),
        ("import subprocess\nsubprocess.run('ls', shell=True)", "subprocess with shell"),
    ],
)
def test_the_scan_finds_each_way_of_loading_code(source: str, what: str) -> None:
    """The scan above can fail: each construct it looks for is found in a snippet."""
    assert [w for _, w in unsafe_constructs(source) if w.startswith(what)] != []


@pytest.mark.parametrize(
    "source",
    [
        "import yaml\nyaml.safe_load(t)",
        "import yaml\nyaml.load(t, Loader=yaml.SafeLoader)",
        "import yaml\nF = getattr(yaml, 'CSafeLoader', yaml.SafeLoader)\nyaml.load(t, Loader=F)",
        "import yaml\nclass U(yaml.SafeLoader): ...\nyaml.load(t, Loader=U)",
        "import ast\nast.literal_eval('1')",
        "import re\nre.compile('x')",
        "import subprocess\nsubprocess.run(['ls'], shell=False)",
    ],
)
def test_the_scan_lets_the_safe_forms_through(source: str) -> None:
    assert unsafe_constructs(source) == []


def test_a_python_tag_in_the_config_is_a_yaml_error_not_an_object(tmp_path: Path) -> None:
    """The config loader is a SafeLoader: a tag that would call a function is refused."""
    marker = tmp_path / "ran"
    text = f"interval: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), environ=NO_ENV)
    assert "YAML syntax error" in str(caught.value)
    assert "python/object/apply" in str(caught.value)
    assert not marker.exists()


def test_a_python_tag_in_an_eds_document_is_refused() -> None:
    """An adapted EDS template's output is parsed back with a safe loader too."""
    text = "!!python/object/apply:os.getcwd []\n"
    with pytest.raises(EdsError):
        validate_eds(text, "app", [3, 1])


# --- the API token ---------------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[Harness]:
    harness = Harness(TOKEN)
    yield harness
    harness.server.stop()


@pytest.mark.parametrize("given", [TOKEN, "wrong", TOKEN + "x", ""])
def test_the_token_is_compared_in_constant_time(
    api: Harness, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    """Every presented token goes through ``hmac.compare_digest``, whose time does not
    depend on where the tokens differ, and its answer alone decides."""
    calls: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return False  # refuse even the right token: only this comparison may decide

    monkeypatch.setattr(hmac, "compare_digest", spy)  # as daemon/api/server.py calls it
    status, _, _ = api.raw("POST", "/api/v1/resume", b"{}", token=given)
    assert calls == [(given.encode(), TOKEN.encode())]
    assert status == 401
    assert api.controls.calls == []


# --- the token file ----------------------------------------------------------------------------


def _token_file(tmp_path: Path, mode: int) -> Path:
    path = tmp_path / "api-token"
    path.write_text(TOKEN + "\n", encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o602, 0o666, 0o777, 0o004])
def test_a_token_file_other_users_can_read_or_change_is_refused(tmp_path: Path, mode: int) -> None:
    path = _token_file(tmp_path, mode)
    expected = (
        f"{path} is mode {mode:04o}: other users of this host can read or change the token; "
        f"allow its owner and group only (chmod o-rwx {path})"
    )
    with pytest.raises(ConfigError) as caught:
        read_token(path)
    assert [(p.path, p.message) for p in caught.value.problems] == [("api.token_file", expected)]
    data = base()
    data["api"] = {"token_file": str(path)}
    assert problems_of(data) == {"api.token_file": expected}  # check-config says the same


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o440, 0o660, 0o601])
def test_a_token_file_for_its_owner_and_group_is_read(tmp_path: Path, mode: int) -> None:
    """root:veloflux 0640 (systemd), a Secret's 0440 (Kubernetes). Execute alone for
    others gives nothing away."""
    assert read_token(_token_file(tmp_path, mode)) == TOKEN


def test_a_symlinked_token_is_judged_by_the_file_it_points_to(tmp_path: Path) -> None:
    """A Kubernetes Secret volume holds symlinks (mode 0777 themselves) to its files."""
    target = _token_file(tmp_path, 0o440)
    link = tmp_path / "link"
    link.symlink_to(target)
    assert read_token(link) == TOKEN
    target.chmod(0o444)
    with pytest.raises(ConfigError, match="is mode 0444"):
        read_token(link)


# --- where the API listens --------------------------------------------------------------------


def test_the_api_listens_on_loopback_unless_told_otherwise() -> None:
    api = APISection()
    assert api.listen == "127.0.0.1:9477"
    assert ipaddress.ip_address(api.host).is_loopback
    assert api.token_file is None  # and the write endpoints are off until a token is given


def test_a_non_loopback_listen_without_a_token_is_accepted_silently(tmp_path: Path) -> None:
    """What the code does, as docs/security.md says: no refusal and no warning; the
    write endpoints then answer 403 (tests/unit/test_api.py::
    test_writes_are_403_when_no_token_is_configured) and the read endpoints answer
    whoever reaches the port."""
    data = base()
    data["api"] = {"listen": "0.0.0.0:9477"}
    config, warnings = load_config_checked(write(tmp_path, yaml.safe_dump(data)), environ=NO_ENV)
    assert config.api.host == "0.0.0.0"
    assert config.api.token_file is None
    assert [w.path for w in warnings] == []
    assert validate_config(data).api.listen == "0.0.0.0:9477"


def test_a_browser_page_from_another_origin_gets_no_cors_permission(api: Harness) -> None:
    """No ``Access-Control-Allow-*`` header is ever sent: a page on another site cannot
    read the API's answers, and its preflight for an ``Authorization`` header fails."""
    origin = {"Origin": "https://elsewhere.example"}
    preflight = {**origin, "Access-Control-Request-Method": "POST"}
    for method, path, headers in [
        ("GET", "/status", origin),
        ("OPTIONS", "/api/v1/pause", preflight),
        ("POST", "/api/v1/pause", origin),
    ]:
        status, response, _ = api.raw(method, path, b"{}", headers, token=None)
        allowed = [name for name, _ in response.getheaders() if name.lower().startswith("access-")]
        assert allowed == [], (method, path)
        assert status in (200, 401, 405), (method, path, status)
    assert api.controls.calls == []


# --- EDS files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_an_eds_file_is_swapped_in_whole_with_mode_0644_less_the_umask(
    tmp_path: Path, umask: int, mode: int
) -> None:
    """Envoy, another user, must read it: 0644 before the umask (the systemd unit's
    UMask=0027 makes it 0640, for Envoy in the agent's group). A reader holding the
    old file reads the old document whole while the new one is moved in."""
    old_text = render_eds("app", ENDPOINTS, version="1")
    new_text = render_eds("app", ENDPOINTS, version="2")
    path = write_eds(tmp_path, "app", old_text)
    previous = os.umask(umask)
    try:
        with path.open(encoding="utf-8") as reader:
            write_eds(tmp_path, "app", new_text)
            assert reader.read() == old_text
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode
    assert path.read_text(encoding="utf-8") == new_text
    assert [p.name for p in tmp_path.iterdir()] == ["app.yaml"]


def test_a_failed_eds_write_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills up at the last step, the rename: Envoy keeps the old file whole."""
    old_text = render_eds("app", ENDPOINTS, version="1")
    path = write_eds(tmp_path, "app", old_text)

    def disk_full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", disk_full)  # as util/files.py calls it
    with pytest.raises(EdsError, match=r"cannot write app\.yaml .*: No space left on device"):
        write_eds(tmp_path, "app", render_eds("app", ENDPOINTS, version="2"))
    assert path.read_text(encoding="utf-8") == old_text
    assert [p.name for p in tmp_path.iterdir()] == ["app.yaml"]


# --- the audit log, the dashboard, Envoy's admin answers ----------------------------------------


def test_the_audit_log_is_created_for_its_owner_and_group(tmp_path: Path) -> None:
    """It names operators and token fingerprints: 0640 before the umask, never 0644."""
    log = AuditLog(tmp_path / "audit.jsonl", Events(), max_bytes=1 << 20, backups=1)
    previous = os.umask(0o022)
    try:
        assert log.action("pause", Actor("cli:alice", "sha256:0123abcd"), "incident") == 1
    finally:
        os.umask(previous)
    assert log.path.stat().st_mode & 0o777 == 0o640
    assert TOKEN not in log.path.read_text(encoding="utf-8")


def test_the_dashboard_keeps_the_token_out_of_storage_and_markup() -> None:
    """The page holds the token in a variable: no storage, cookie or URL that would
    outlive the tab, and it writes text, never markup, into the page."""
    source = (PACKAGE / "daemon" / "api" / "static" / "dashboard.js").read_text(encoding="utf-8")
    script = re.sub(r"^\s*//.*$", "", re.sub(r"/\*.*?\*/", "", source, flags=re.S), flags=re.M)
    for needle in ("localStorage", "sessionStorage", "indexedDB", "document.cookie"):
        assert needle not in script, needle
    for needle in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert needle not in script, needle
    assert "Authorization: `Bearer ${state.token}`" in script


def test_the_dashboard_cannot_be_framed_and_leaks_no_referrer(api: Harness) -> None:
    """Against clickjacking and leaking the agent's address: no frame, no referrer, no
    form or base URL elsewhere."""
    _, response, _ = api.raw("GET", "/", token=None)
    assert response.getheader("Referrer-Policy") == "no-referrer"
    assert response.getheader("X-Frame-Options") == "DENY"
    policy = response.getheader("Content-Security-Policy", "")
    for directive in ("frame-ancestors 'none'", "form-action 'none'", "base-uri 'none'"):
        assert directive in policy, directive


def test_an_envoy_admin_answer_over_the_cap_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever answers on Envoy's admin port cannot make the agent buffer without end."""

    class Huge(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"[" + b"0," * 2000 + b"0]"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Huge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(envoy_admin, "_MAX_BODY_BYTES", 1000)
        admin = envoy_admin.EnvoyAdmin(f"http://127.0.0.1:{server.server_address[1]}", 5.0)
        with pytest.raises(envoy_admin.EnvoyAdminError, match="answer larger than 1000 bytes"):
            admin.get_json("/clusters?format=json")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- the page itself ---------------------------------------------------------------------------

_CITED = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def test_every_test_docs_security_names_exists() -> None:
    text = SECURITY_DOC.read_text(encoding="utf-8")
    cited = sorted(set(_CITED.findall(text)))
    assert len(cited) >= 20, "docs/security.md should name the test behind each claim"
    missing = []
    for file, name in cited:
        path = ROOT / file
        tree = (
            ast.parse(path.read_text(encoding="utf-8"))
            if path.exists()
            else ast.Module(body=[], type_ignores=[])
        )
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        if name not in defined:
            missing.append(f"{file}::{name}")
    assert missing == []
