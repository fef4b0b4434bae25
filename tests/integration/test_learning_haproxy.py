"""The learning core end to end against a real HAProxy and demo backends.

Two minutes of history from four backends, one three times slower and one failing a
fifth of its requests, under load that varies so the model sees loads change; then
train, and the dry-run must put the model in charge and give both bad servers less
weight than the healthy ones. Without the model the same dry-run is in fallback.

``record`` keeps running through training and the dry-runs, as the daemon keeps
recording while it retrains: the dry-run then judges the servers on a regular last
interval, not on one that spans the whole training (a CI run once saw a healthy
server judged worst on that long interval).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from integration.loadgen import run_load_sync
from integration.stack import DemoServer, LocalStack
from tests.integration.helpers import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.solo]

SERVERS = (
    DemoServer("s1", concurrency=8, mean_ms=20),
    DemoServer("s2", concurrency=8, mean_ms=20),
    DemoServer("s3", concurrency=8, mean_ms=60),
    DemoServer("s4", concurrency=8, mean_ms=20, error_rate=0.2),
)
# Offered load per 15 s phase (requests/s): varied, so that load is something to learn.
PHASES = (200, 320, 260, 360, 220, 300, 340, 240, 280, 300, 260, 320, 240, 300, 280, 260)
PHASE_S = 15.0
HISTORY_S = 122.0  # recorded before training: two minutes and a tick


def _load(url: str, stop: threading.Event) -> None:
    for i, rate in enumerate(PHASES):
        if stop.is_set():
            return
        run_load_sync(url, rate, PHASE_S, int(rate * PHASE_S), seed=i)


def test_record_train_dry_run_uses_the_model_and_falls_back_without_it(tmp_path: Path) -> None:
    with LocalStack(tmp_path / "stack", SERVERS) as stack:
        config = stack.write_agent_config(
            tmp_path / "v.yaml",
            interval="1s",
            extra="policy:\n  stale_after: 1m\n",
        )
        stop = threading.Event()
        loader = threading.Thread(target=_load, args=(stack.url, stop), daemon=True)
        loader.start()
        record_log = tmp_path / "record.log"
        with record_log.open("w") as log:
            recording = subprocess.Popen(
                [sys.executable, "-m", "veloflux", "record", "-c", str(config),
                 "--duration", "240s"],
                stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        try:
            time.sleep(HISTORY_S)
            assert recording.poll() is None, record_log.read_text()
            trained = run_cli("train", "-c", config, "--output", "json", timeout=120)
            assert trained.code == 0, trained.stderr
            report = trained.json()
            assert report["promoted"], report["reason"]
            assert report["metrics"]["mae_p50_seconds"] < report["metrics"]["naive_mae_seconds"]

            with_model = run_cli("dry-run", "-c", config, "--output", "json")
            assert with_model.code == 0, with_model.stderr
            pool = with_model.json()["pools"][0]
            assert pool["mode"] == "model", pool
            planned = {s["server"]: s["planned_weight"] for s in pool["servers"]}
            healthy = min(planned["s1"], planned["s2"])
            assert planned["s3"] < healthy, pool
            assert planned["s4"] < healthy, pool
            for server in pool["servers"]:
                assert set(server["confidence_parts"]) == {"width", "realized", "ood", "freshness"}

            # #18 (6): once recording stops, the journal goes stale. Before, the README's
            # own workflow (record, train, dry-run) then showed every pool in fallback
            # ("no recent history"); now the preview observes twice and uses the model.
            recording.terminate()
            recording.wait(timeout=30)
            strict = tmp_path / "strict.yaml"
            strict.write_text(config.read_text().replace("stale_after: 1m", "stale_after: 2s"))
            time.sleep(3.0)  # older than stale_after: 2s
            preview = run_cli("dry-run", "-c", strict, "--output", "json")
            assert preview.code == 0, preview.stderr
            assert "observing twice, 1s apart" in preview.stderr
            assert preview.json()["pools"][0]["mode"] == "model", preview.json()["pools"][0]

            # A model file changed after VeloFlux wrote it is refused: fallback, not a crash.
            version = (stack.workdir / "models" / "current").read_text().strip()
            booster = stack.workdir / "models" / "versions" / version / "latency_q90.ubj"
            data = bytearray(booster.read_bytes())
            data[len(data) // 2] ^= 0xFF
            booster.write_bytes(bytes(data))
            tampered = run_cli("dry-run", "-c", config, "--output", "json")
            assert tampered.code == 0, tampered.stderr
            tampered_pool = tampered.json()["pools"][0]
            assert tampered_pool["mode"] == "fallback"
            assert "checksum" in tampered_pool["reason"]

            shutil.rmtree(stack.workdir / "models")
            without = run_cli("dry-run", "-c", config, "--output", "json")
            assert without.code == 0, without.stderr
            assert without.json()["pools"][0]["mode"] == "fallback"
            assert loader.is_alive()  # the load ran through every dry-run
        finally:
            recording.terminate()
            recording.wait(timeout=30)
            stop.set()
            loader.join(timeout=PHASE_S + 5)
