"""AgentMetrics: values land under the contracted names, per-tick series are replaced,
and the exposition is valid Prometheus text (checked by the real ``promtool``)."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Sequence

import pytest
from prometheus_client import REGISTRY

from tests.unit.factories import Pool, Server, observation, policy
from veloflux.agent.ports import TickResult
from veloflux.daemon.metrics import MODES, AgentMetrics
from veloflux.decide.planner import plan_weights
from veloflux.domain.advice import Advice, PoolAdvice, ServerAdvice
from veloflux.domain.weightplan import ApplyReport, ServerPlan, WriteResult
from veloflux.util.events import Events

FREE = policy(max_step_ratio=10, deadband_ratio=0)  # model targets reached in one tick


def metrics(events: Events | None = None) -> AgentMetrics:
    return AgentMetrics("1.2.3", events or Events())


def value(m: AgentMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def model_advice(pool: str, shares: dict[str, float], confidence: float) -> Advice:
    servers = {name: ServerAdvice(name, confidence, {}, share) for name, share in shares.items()}
    return Advice("v1", {pool: PoolAdvice(pool, confidence, "", servers, 100.0)})


def tick(
    pools: Sequence[Pool],
    advice: Advice | None = None,
    writes: Sequence[WriteResult] | None = None,
    duration: float = 0.02,
) -> TickResult:
    """A TickResult planned from the given pools; ``writes`` None is a dry tick."""
    obs = observation(pools)
    plan = plan_weights(obs, FREE, advice or Advice(None))
    report = None if writes is None else ApplyReport(tuple(writes))
    return TickResult(obs, plan, report, duration)


def written(planned: ServerPlan, error: str = "", read_back: int | None = None) -> WriteResult:
    """The sink's report of writing ``planned``; a success reads back the planned weight."""
    assert planned.planned_weight is not None
    confirmed = planned.planned_weight if not error else read_back
    old = planned.current_weight
    return WriteResult(
        planned.backend, planned.server, old, planned.planned_weight, confirmed, error
    )


def server_plan(result: TickResult, server: str) -> ServerPlan:
    return next(s for s in result.plan.servers() if s.server == server)


APP = Pool("app", [Server("s1", weight=100, initial=100), Server("s2", weight=100, initial=100)])


def test_build_info_names_the_version_and_python() -> None:
    m = metrics()
    rendered = m.render().decode()
    assert 'veloflux_build_info{python="' in rendered
    assert 'version="1.2.3"} 1.0' in rendered


def test_each_instance_has_its_own_registry_and_leaves_the_global_one_alone() -> None:
    first, second = metrics(), metrics()
    first.tick_overrun()
    assert value(first, "veloflux_tick_overruns_total") == 1
    assert value(second, "veloflux_tick_overruns_total") == 0
    assert REGISTRY.get_sample_value("veloflux_tick_overruns_total") is None


def test_a_dry_tick_exports_current_and_planned_weights_and_confidence() -> None:
    m = metrics()
    result = tick([APP], model_advice("app", {"s1": 0.75, "s2": 0.25}, 0.9))
    m.tick_succeeded(result, finished_at_epoch=1_700_000_100.0)

    assert value(m, "veloflux_ticks_total") == 1
    assert value(m, "veloflux_last_successful_tick_timestamp_seconds") == 1_700_000_100.0
    assert value(m, "veloflux_tick_duration_seconds_count") == 1
    assert value(m, "veloflux_tick_duration_seconds_bucket", le="0.025") == 1
    s1 = server_plan(result, "s1")
    assert s1.planned_weight is not None
    assert s1.planned_weight > 100  # the plan moves it; a dry tick leaves it as read
    assert value(m, "veloflux_server_weight", backend="app", server="s1") == 100
    assert value(m, "veloflux_server_planned_weight", backend="app", server="s1") == (
        s1.planned_weight
    )
    assert value(m, "veloflux_server_confidence", backend="app", server="s1") == pytest.approx(0.9)
    assert value(m, "veloflux_weight_changes_total", backend="app") == 0


def test_pool_mode_is_one_for_the_current_mode_and_zero_for_the_others() -> None:
    m = metrics()
    m.tick_succeeded(tick([APP]), 1.0)  # no model: fallback
    modes = {mode: value(m, "veloflux_pool_mode", backend="app", mode=mode) for mode in MODES}
    assert modes == {mode: (1.0 if mode == "fallback" else 0.0) for mode in MODES}
    assert value(m, "veloflux_pool_confidence", backend="app") == 0

    m.tick_succeeded(tick([APP], model_advice("app", {"s1": 0.5, "s2": 0.5}, 0.8)), 2.0)
    assert value(m, "veloflux_pool_mode", backend="app", mode="model") == 1
    assert value(m, "veloflux_pool_mode", backend="app", mode="fallback") == 0
    assert value(m, "veloflux_pool_confidence", backend="app") == pytest.approx(0.8)


def test_written_weights_are_the_confirmed_ones_and_failures_count() -> None:
    m = metrics()
    dry = tick([APP], model_advice("app", {"s1": 0.75, "s2": 0.25}, 0.9))
    s1, s2 = server_plan(dry, "s1"), server_plan(dry, "s2")
    writes = [written(s1), written(s2, error="No such server.")]
    m.tick_succeeded(tick([APP], model_advice("app", {"s1": 0.75, "s2": 0.25}, 0.9), writes), 1.0)

    assert value(m, "veloflux_weight_changes_total", backend="app") == 1
    assert value(m, "veloflux_weight_write_failures_total", backend="app") == 1
    assert value(m, "veloflux_server_weight", backend="app", server="s1") == s1.planned_weight
    assert value(m, "veloflux_server_weight", backend="app", server="s2") == 100  # as read


def test_a_read_back_that_disagrees_is_the_weight_in_effect() -> None:
    m = metrics()
    advice = model_advice("app", {"s1": 0.75, "s2": 0.25}, 0.9)
    s1 = server_plan(tick([APP], advice), "s1")
    refused = written(s1, error="read-back shows weight 42", read_back=42)
    m.tick_succeeded(tick([APP], advice, [refused]), 1.0)
    assert value(m, "veloflux_server_weight", backend="app", server="s1") == 42
    assert value(m, "veloflux_weight_write_failures_total", backend="app") == 1


def test_a_server_or_pool_gone_from_the_proxy_disappears_from_the_metrics() -> None:
    m = metrics()
    other = Pool("api", [Server("a1")])
    m.tick_succeeded(tick([APP, other]), 1.0)
    assert value(m, "veloflux_server_weight", backend="app", server="s2") == 100
    assert value(m, "veloflux_pool_confidence", backend="api") == 0

    m.tick_succeeded(tick([Pool("app", [Server("s1", weight=100, initial=100)])]), 2.0)
    for name in ("weight", "planned_weight", "confidence"):
        assert value(m, f"veloflux_server_{name}", backend="app", server="s2") is None
        assert value(m, f"veloflux_server_{name}", backend="api", server="a1") is None
    assert value(m, "veloflux_server_weight", backend="app", server="s1") == 100
    assert value(m, "veloflux_pool_mode", backend="api", mode="fallback") is None
    assert value(m, "veloflux_pool_confidence", backend="api") is None


def test_an_unreadable_weight_is_left_out_not_exported_as_zero() -> None:
    m = metrics()
    m.tick_succeeded(tick([Pool("app", [Server("s1", weight=None)])]), 1.0)
    assert value(m, "veloflux_server_weight", backend="app", server="s1") is None
    assert value(m, "veloflux_server_confidence", backend="app", server="s1") == 0


def test_failed_ticks_count_by_reason_and_keep_the_last_good_state() -> None:
    m = metrics()
    m.tick_succeeded(tick([APP]), 5.0)
    m.tick_failed("source", 0.5)
    m.tick_failed("source", 0.5)
    m.tick_failed("sink", 3.0)
    assert value(m, "veloflux_tick_failures_total", reason="source") == 2
    assert value(m, "veloflux_tick_failures_total", reason="sink") == 1
    assert value(m, "veloflux_tick_failures_total", reason="config") == 0
    assert value(m, "veloflux_tick_duration_seconds_count") == 4
    assert value(m, "veloflux_ticks_total") == 1
    assert value(m, "veloflux_last_successful_tick_timestamp_seconds") == 5.0
    assert value(m, "veloflux_server_weight", backend="app", server="s1") == 100


def test_an_unknown_label_value_is_refused_rather_than_becoming_a_new_series() -> None:
    m = metrics()
    with pytest.raises(ValueError, match="tick failure reason 'timeout'"):
        m.tick_failed("timeout", 1.0)
    with pytest.raises(ValueError, match="training outcome"):
        m.training_finished("maybe", 1.0, 1.0)


def test_training_outcomes_and_the_last_success() -> None:
    m = metrics()
    m.training_finished("promoted", 12.5, 1_000.0)
    m.training_finished("not_promoted", 9.0, 2_000.0)
    m.training_finished("failed", 1.0, 3_000.0)
    m.training_finished("skipped", 0.2, 4_000.0)
    assert value(m, "veloflux_trainings_total", outcome="promoted") == 1
    assert value(m, "veloflux_trainings_total", outcome="not_promoted") == 1
    assert value(m, "veloflux_trainings_total", outcome="failed") == 1
    assert value(m, "veloflux_trainings_total", outcome="skipped") == 1
    assert value(m, "veloflux_last_training_success_timestamp_seconds") == 2_000.0
    assert value(m, "veloflux_last_training_duration_seconds") == 9.0


def test_model_info_shows_one_version_at_a_time_and_none_clears_it() -> None:
    m = metrics()
    assert "veloflux_model_info{" not in m.render().decode()
    m.model_loaded("v1")
    m.model_loaded("v2")
    assert value(m, "veloflux_model_info", version="v1") is None
    assert value(m, "veloflux_model_info", version="v2") == 1
    m.model_loaded(None)
    assert "veloflux_model_info{" not in m.render().decode()


def test_config_reload_keeps_the_last_success_time_when_a_reload_fails() -> None:
    m = metrics()
    m.config_reloaded(True, 100.0)
    assert value(m, "veloflux_config_last_reload_successful") == 1
    m.config_reloaded(False, 200.0)
    assert value(m, "veloflux_config_last_reload_successful") == 0
    assert value(m, "veloflux_config_last_reload_success_timestamp_seconds") == 100.0


def test_operator_state_sources_overruns_and_proxy_reloads() -> None:
    m = metrics()
    m.operator_state(paused=True, overrides=3)
    m.source_up("haproxy", True)
    m.source_up("prometheus", False)
    m.tick_overrun()
    m.proxy_reload_detected()
    m.proxy_reload_detected()
    assert value(m, "veloflux_paused") == 1
    assert value(m, "veloflux_overrides_active") == 3
    assert value(m, "veloflux_source_up", source="haproxy") == 1
    assert value(m, "veloflux_source_up", source="prometheus") == 0
    assert value(m, "veloflux_tick_overruns_total") == 1
    assert value(m, "veloflux_proxy_reloads_total") == 2
    m.operator_state(paused=False, overrides=0)
    assert value(m, "veloflux_paused") == 0


def test_events_are_exported_per_kind_at_scrape_time() -> None:
    events = Events()
    m = metrics(events)
    events.record("malformed_stats", "row 3", backend="app")
    events.record("malformed_stats", "row 4", backend="api")
    events.record("write_refused", "No such server.")
    assert value(m, "veloflux_events_total", kind="malformed_stats") == 2
    assert value(m, "veloflux_events_total", kind="write_refused") == 1
    events.record("write_refused", "again")
    assert value(m, "veloflux_events_total", kind="write_refused") == 2


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found on PATH: it comes from Debian's `prometheus` package, "
            "which `make deps` installs"
        )
    return path


def test_the_exposition_passes_promtool_check_metrics() -> None:
    events = Events()
    events.record("malformed_stats", "bad row", backend="app")
    m = metrics(events)
    advice = model_advice("app", {"s1": 0.75, "s2": 0.25}, 0.9)
    s1 = server_plan(tick([APP], advice), "s1")
    m.tick_succeeded(tick([APP, Pool('odd "name\\', [Server("x\ny")])], advice, [written(s1)]), 1.0)
    m.tick_failed("error", 0.1)
    m.training_finished("promoted", 3.0, 10.0)
    m.model_loaded("2024-05-01T12-00-00")
    m.config_reloaded(True, 1.0)
    m.operator_state(False, 1)
    m.source_up("haproxy", True)

    checked = subprocess.run(
        [promtool(), "check", "metrics"], input=m.render(), capture_output=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert checked.stdout.decode().strip() == ""  # no lint complaints either
    assert AgentMetrics.CONTENT_TYPE.startswith("text/plain")


def test_render_never_fails_while_ticks_run_in_another_thread() -> None:
    m = metrics()
    results = [
        tick([APP]),
        tick([Pool("app", [Server("s1")]), Pool("api", [Server(f"a{i}") for i in range(20)])]),
    ]
    stop = threading.Event()
    errors: list[BaseException] = []

    def ticker() -> None:
        try:
            n = 0
            while not stop.is_set():
                m.tick_succeeded(results[n % 2], float(n))
                m.model_loaded(None if n % 3 else f"v{n}")
                n += 1
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=ticker)
    thread.start()
    try:
        for _ in range(300):
            text = m.render().decode()
            assert "veloflux_ticks_total" in text
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not errors
    assert not thread.is_alive()


def test_the_tick_line_says_whether_prometheus_answered() -> None:
    from dataclasses import replace

    from veloflux.agent.summary import summary_line
    from veloflux.domain.observation import ExternalFeatures

    result = tick([Pool("app", [Server("a")])])
    assert "prometheus=" not in summary_line(result)  # not configured: not mentioned
    up = replace(
        result,
        observation=result.observation.with_external(
            ExternalFeatures("prometheus", (("prom_cpu", (0.5,)),))
        ),
    )
    assert " prometheus=up " in summary_line(up)
    down = replace(
        result,
        observation=result.observation.with_external(
            ExternalFeatures("prometheus", (("prom_cpu", (float("nan"),)),), error="refused")
        ),
    )
    assert " prometheus=down " in summary_line(down)
