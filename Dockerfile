# syntax=docker/dockerfile:1
# The VeloFlux images: `agent` (the default, last stage) and `demo` (the demo backends
# and the load generator of the compose stack, integration/docker-compose.yml).
#
#   docker build -t veloflux/agent:0.1.0 .
#   docker build -t veloflux/demo:0.1.0 --target demo .
#
# Offline (no registry, no PyPI: how `make compose-check` builds under podman), put the
# wheels in ./wheelhouse and the base in the local image store, then:
#   podman build --build-arg PYTHON_IMAGE=localhost/python:3.11 \
#                --build-arg PIP_SOURCE="--no-index --find-links /src/wheelhouse" .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- wheels: the project's wheel and every dependency's, in one directory ------------------
FROM ${PYTHON_IMAGE} AS wheels
ARG PIP_SOURCE=""
WORKDIR /src
COPY . /src
# xgboost-cpu, not xgboost: the same library without the GPU libraries (about 20 MB
# against 700 MB); pyproject.toml already depends on it.
RUN pip wheel --no-cache-dir --wheel-dir /wheels ${PIP_SOURCE} . "aiohttp>=3.9,<4"

# --- the agent: the wheel installed, nothing else of the source tree -------------------------
FROM ${PYTHON_IMAGE} AS agent-base
# eds/ exists and is the agent's: a fresh named volume mounted there takes its owner.
RUN groupadd --system --gid 10001 veloflux \
    && useradd --system --uid 10001 --gid veloflux --no-create-home \
       --home-dir /var/lib/veloflux --shell /usr/sbin/nologin veloflux \
    && mkdir -p /var/lib/veloflux/eds /etc/veloflux \
    && chown -R veloflux:veloflux /var/lib/veloflux
COPY --from=wheels /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-index --find-links /tmp/wheels "veloflux==0.1.0" \
    && rm -rf /tmp/wheels
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

# --- demo: backends and load generator (the project's integration package, aiohttp) -------
FROM agent-base AS demo
COPY --from=wheels /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-index --find-links /tmp/wheels "aiohttp>=3.9,<4" \
    && rm -rf /tmp/wheels
COPY integration/ /opt/veloflux/integration/
WORKDIR /opt/veloflux
USER 10001:10001
ENTRYPOINT ["python", "-m"]
CMD ["integration.demo_backend", "--help"]

# --- agent (default) ---------------------------------------------------------------------
FROM agent-base AS agent
COPY integration/compose/veloflux.yaml /etc/veloflux/veloflux.yaml
# Journal, models, audit log and operator state: one volume.
VOLUME ["/var/lib/veloflux"]
USER 10001:10001
WORKDIR /var/lib/veloflux
EXPOSE 9477
# /-/healthy answers 200 while the loop turns (a tick ended within max(3 intervals, 30 s)).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(u.urlopen('http://127.0.0.1:9477/-/healthy', timeout=2).status != 200)"]
ENTRYPOINT ["veloflux-agent"]
CMD ["run", "-c", "/etc/veloflux/veloflux.yaml", "--log-format", "json"]
