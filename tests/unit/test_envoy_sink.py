"""The Envoy sink's write path against a stand-in Envoy that watches the EDS directory
the way Envoy does: a file moved into place is taken (``update_success`` rises and
``/clusters`` serves its weights) or rejected (``update_rejected`` rises and the old
weights stay), on cue, late or never. What a real Envoy does with the same files:
tests/integration/test_envoy.py.

Most tests here were written to kill mutants of ``veloflux/envoy/sink.py`` that the
integration tests could not see from the unit suite (``make mutation``); each says
which.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

from veloflux.domain.weightplan import ApplyReport, Mode, PoolPlan, ServerPlan, WeightPlan
from veloflux.envoy.admin import EnvoyAdmin, EnvoyAdminError, EnvoyNotJson
from veloflux.envoy.eds import Endpoint, eds_path, render_eds, write_eds
from veloflux.envoy.sink import EnvoySink, assignment
from veloflux.util.events import Events

S1, S2, S3 = "127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083"
GOOD = {S1: 3, S2: 1, S3: 2}  # what Envoy serves before every test
WHEN = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class FakeEnvoy(EnvoyAdmin):
    """Envoy's admin API for one cluster, reading ``eds_dir`` as Envoy watches it.

    ``lag``: how many admin calls pass before a new file is noticed (``None``: never);
    ``accept``: whether a noticed file is taken or rejected; ``serving``: weights
    served, which a taken file replaces; ``fail_json``/``fail_text``: raise on
    ``/stats`` or ``/clusters``.
    """

    def __init__(self, eds_dir: Path, cluster: str = "app") -> None:
        super().__init__("http://127.0.0.1:9901", timeout_seconds=1.0)
        self.eds_dir = eds_dir
        self.cluster = cluster
        self.serving = dict(GOOD)
        self.success = 1.0
        self.rejected = 0.0
        self.lag: int | None = 0
        self.accept = True
        self.seen = self._file()
        self.fail_json: EnvoyAdminError | None = None
        self.fail_text: EnvoyAdminError | None = None
        self.paths: list[str] = []
        self.on_call: list[Callable[[], None]] = []  # run at each admin call, after the watch

    def _file(self) -> str | None:
        try:
            return eds_path(self.eds_dir, self.cluster).read_text(encoding="utf-8")
        except OSError:
            return None

    def _watch(self) -> None:
        self._notice()
        for hook in self.on_call:
            hook()

    def _notice(self) -> None:
        text = self._file()
        if text is None or text == self.seen:
            return
        if self.lag is None:
            return
        if self.lag > 0:
            self.lag -= 1
            return
        self.seen = text
        if not self.accept:
            self.rejected += 1
            return
        document = json.loads(text)
        self.serving = {
            "{address}:{port_value}".format(**lb["endpoint"]["address"]["socket_address"]): lb[
                "load_balancing_weight"
            ]
            for lb in document["resources"][0]["endpoints"][0]["lb_endpoints"]
        }
        self.success += 1

    def get_json(self, path: str) -> Any:
        self.paths.append(path)
        self._watch()
        if self.fail_json:
            raise self.fail_json
        where, _, query = path.partition("?")
        params = urllib.parse.parse_qs(query)
        if where != "/stats" or params.get("format") != ["json"]:
            raise EnvoyNotJson(f"Envoy admin at {self.address}{path}: not JSON")
        own, other = f"cluster.{self.cluster}.", f"cluster.{self.cluster}2."
        stats = {
            own + "update_attempt": self.success + self.rejected,
            own + "update_success": self.success,
            own + "update_rejected": self.rejected,
            own + "upstream_rq_total": 7.0,
            other + "update_success": 50.0,
            other + "update_rejected": 50.0,
        }
        pattern = re.compile(params["filter"][0])
        return {"stats": [{"name": k, "value": v} for k, v in stats.items() if pattern.search(k)]}

    def get_text(self, path: str) -> str:
        self.paths.append(path)
        self._watch()
        if self.fail_text:
            raise self.fail_text
        if path != "/clusters":
            raise EnvoyAdminError(f"Envoy admin at {self.address}{path}: HTTP 404 Not Found")
        lines = [f"{self.cluster}2::{S1}::weight::99"]
        for server, weight in self.serving.items():
            lines += [f"{self.cluster}::{server}::cx_active::0"]
            lines += [f"{self.cluster}::{server}::weight::{weight}"]
        return "\n".join(lines) + "\n"


class FakeEnvoys(EnvoyAdmin):
    """One Envoy serving several clusters: each ``FakeEnvoy`` answers for its own."""

    def __init__(self, *clusters: FakeEnvoy) -> None:
        super().__init__("http://127.0.0.1:9901", timeout_seconds=1.0)
        self.clusters = clusters

    def get_json(self, path: str) -> Any:
        return {"stats": [s for c in self.clusters for s in c.get_json(path)["stats"]]}

    def get_text(self, path: str) -> str:
        return "".join(c.get_text(path) for c in self.clusters)


@dataclass
class Clock:
    """Monotonic time that moves only when the sink sleeps, by ``step`` each time."""

    step: float = 0.25
    now: float = 100.0
    sleeps: list[float] = field(default_factory=list)

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += self.step


class Logged(logging.Handler):
    """Keeps every message logged through it."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@dataclass
class Rig:
    envoy: FakeEnvoy
    clock: Clock
    events: Events
    sink: EnvoySink
    logged: Logged

    @property
    def file(self) -> str:
        return eds_path(self.envoy.eds_dir, "app").read_text(encoding="utf-8")


def endpoints(weights: dict[str, int]) -> list[Endpoint]:
    return [
        Endpoint(s.rpartition(":")[0], int(s.rpartition(":")[2]), w) for s, w in weights.items()
    ]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    eds_dir = tmp_path / "eds"
    eds_dir.mkdir()
    write_eds(eds_dir, "app", render_eds("app", endpoints(GOOD), "good"))
    logged, logger = Logged(), logging.getLogger(f"test.envoy.sink.{id(eds_dir)}")
    logger.addHandler(logged)
    logger.propagate = False
    envoy, clock, events = FakeEnvoy(eds_dir), Clock(), Events(logger)
    sink = EnvoySink(envoy, eds_dir, 1.0, events, clock.monotonic, clock.sleep)
    return Rig(envoy, clock, events, sink, logged)


def plan(planned: dict[str, int | None], mode: Mode = "model") -> WeightPlan:
    """Pool ``app`` at GOOD's weights, with ``planned`` weights for some servers."""
    current: dict[str, int | None] = {**GOOD, **{s: GOOD.get(s) for s in planned}}
    servers = tuple(
        ServerPlan("app", s, "UP", w, planned.get(s, w), w, 0.9, mode) for s, w in current.items()
    )
    return WeightPlan(WHEN, (PoolPlan("app", "eds", mode, 0.9, mode, servers),))


def outcome(report: ApplyReport) -> list[tuple[str, int | None, int, int | None, str]]:
    """Each result of cluster ``app``, without the cluster's name."""
    assert all(r.backend == "app" for r in report.results)
    return [
        (r.server, r.old_weight, r.new_weight, r.confirmed_weight, r.error) for r in report.results
    ]


def served_file(text: str) -> dict[str, tuple[int, str]]:
    """The EDS file's endpoints: ADDRESS:PORT -> (weight, health)."""
    lbs = json.loads(text)["resources"][0]["endpoints"][0]["lb_endpoints"]
    return {
        "{address}:{port_value}".format(**lb["endpoint"]["address"]["socket_address"]): (
            lb["load_balancing_weight"],
            lb.get("health_status", ""),
        )
        for lb in lbs
    }


# --- written and confirmed -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["model", "fallback"])
def test_a_plan_is_written_as_one_whole_file_and_confirmed_by_envoy(rig: Rig, mode: Mode) -> None:
    """Kills: the modes a sink writes misspelt, the version not the plan's time, the
    confirmed weight or the empty error of a success altered, the stats filter altered."""
    report = rig.sink.apply(plan({S1: 6}, mode))
    assert outcome(report) == [(S1, 3, 6, 6, "")]
    assert served_file(rig.file) == {S1: (6, ""), S2: (1, ""), S3: (2, "")}
    assert json.loads(rig.file)["version_info"] == WHEN.isoformat()
    assert rig.envoy.serving == {S1: 6, S2: 1, S3: 2}
    stats = urllib.parse.parse_qs(rig.envoy.paths[0].partition("?")[2])
    assert stats == {"format": ["json"], "filter": [r"^cluster\.app\.update_"]}
    assert rig.events.totals() == {}
    assert rig.clock.sleeps == []


@pytest.mark.parametrize("mode", ["hold", "unmanaged"])
def test_a_hold_or_unmanaged_pool_is_never_written(rig: Rig, mode: Mode) -> None:
    """Kills: ``pool.mode in ("model", "fallback")`` loosened."""
    before = rig.file
    assert rig.sink.apply(plan({S1: 6}, mode)).results == ()
    assert rig.file == before
    assert rig.envoy.paths == []


def test_a_pool_with_nothing_to_change_is_not_written(rig: Rig) -> None:
    """Kills: ``and changes`` made ``or changes``, and the change filter dropped."""
    before = rig.file
    assert rig.sink.apply(plan({S1: 3})).results == ()
    assert rig.file == before
    assert rig.envoy.paths == []


def test_a_server_planned_at_zero_is_written_draining_at_weight_one(rig: Rig) -> None:
    """Kills: the DRAINING status misspelt or given to weight 1, the floor of 1 moved."""
    report = rig.sink.apply(plan({S2: 0, S3: 1}))
    assert outcome(report) == [(S2, 1, 1, 1, ""), (S3, 2, 1, 1, "")]
    assert served_file(rig.file) == {S1: (3, ""), S2: (1, "DRAINING"), S3: (1, "")}


def test_an_ipv6_endpoint_is_split_at_its_last_colon() -> None:
    """Kills: ``rpartition`` made ``partition``."""
    servers = (ServerPlan("app", "::1:8080", "UP", 2, 4, 2, 0.0, "fallback"),)
    pool = PoolPlan("app", "eds", "fallback", 0.0, "no model", servers)
    assert assignment(pool) == [Endpoint("::1", 8080, 4)]


def test_a_server_not_planned_keeps_its_current_weight_in_the_file() -> None:
    """Kills: the planned/current choice inverted."""
    servers = (
        ServerPlan("app", S1, "UP", 2, 4, 2, 0.0, "fallback"),
        ServerPlan("app", S2, "UP", 5, None, 5, 0.0, "hold: stale"),
    )
    pool = PoolPlan("app", "eds", "fallback", 0.0, "no model", servers)
    assert assignment(pool) == [Endpoint("127.0.0.1", 18081, 4), Endpoint("127.0.0.1", 18082, 5)]


def test_an_empty_pool_has_an_empty_assignment() -> None:
    """Kills: ``endpoints and all(...)`` made ``endpoints or all(...)``."""
    assert assignment(PoolPlan("app", "eds", "fallback", 0.0, "no model", ())) == []


def test_envoy_taking_the_file_late_is_still_confirmed_before_the_deadline(rig: Rig) -> None:
    """Kills: the deadline computed backwards, the poll interval changed."""
    rig.envoy.lag = 4  # two admin calls per poll: taken at the third poll
    report = rig.sink.apply(plan({S1: 6}))
    assert outcome(report) == [(S1, 3, 6, 6, "")]
    assert rig.clock.sleeps == [0.05, 0.05]


# --- refused, failed or unconfirmed: reported, counted, the last good file put back -----------


def failed(rig: Rig, report: ApplyReport, error: str, new: int = 6) -> None:
    """The one change S1 3 -> ``new`` failed with ``error``, counted and logged once
    naming the cluster."""
    assert outcome(report) == [(S1, 3, new, None, error)]
    assert rig.events.totals() == {("eds_update_failed", ()): 1}
    assert rig.logged.messages == [f"eds_update_failed: cluster app: {error}"]


def test_an_update_never_confirmed_gives_up_at_the_deadline_and_puts_the_last_good_file_back(
    rig: Rig,
) -> None:
    """Kills: the deadline test made strict, the message altered, the restore skipped."""
    good = rig.file
    rig.envoy.lag = None
    report = rig.sink.apply(plan({S1: 6}))
    failed(rig, report, "not confirmed within 1s: Envoy did not show the planned weights")
    # Polled at 100, 100.25, 100.5, 100.75 and at the deadline 101: four sleeps between.
    assert rig.clock.sleeps == [0.05] * 4
    assert rig.file == good


def test_a_file_envoy_rejects_is_reported_and_the_last_good_file_put_back(rig: Rig) -> None:
    """Kills: ``rejected > before`` made ``>=``, the message altered, the restore skipped."""
    good = rig.file
    rig.envoy.accept = False
    report = rig.sink.apply(plan({S1: 6}))
    failed(rig, report, "Envoy rejected the file (update_rejected rose); last good kept")
    assert rig.file == good
    assert rig.envoy.serving == GOOD


def test_weights_envoy_serves_without_taking_the_file_do_not_confirm_it(rig: Rig) -> None:
    """Envoy already serves the planned weights (set some other way), but never took the
    file: no ``update_success``, no confirmation. Kills: ``success > before and`` made
    ``or``, or ``>=``."""
    rig.envoy.serving = {**GOOD, S1: 6}
    rig.envoy.lag = None
    failed(
        rig,
        rig.sink.apply(plan({S1: 6})),
        "not confirmed within 1s: Envoy did not show the planned weights",
    )


def test_a_file_taken_but_served_with_other_weights_is_not_confirmed(rig: Rig) -> None:
    """Kills: the weight comparison loosened."""

    def overridden() -> None:
        if rig.envoy.success > 1:
            rig.envoy.serving[S1] = 5

    rig.envoy.on_call.append(overridden)
    failed(
        rig,
        rig.sink.apply(plan({S1: 6})),
        "not confirmed within 1s: Envoy did not show the planned weights",
    )


def test_an_admin_api_failing_while_confirming_is_the_reason_given(rig: Rig) -> None:
    """Kills: the admin error's text dropped from the message."""
    down = EnvoyAdminError("Envoy admin at http://127.0.0.1:9901 unreachable: refused")
    rig.envoy.fail_text = down
    failed(rig, rig.sink.apply(plan({S1: 6})), f"not confirmed within 1s: {down}")


def test_an_admin_api_down_before_writing_fails_the_cluster_and_writes_nothing(rig: Rig) -> None:
    """Kills: the counters read after the write instead of before, the error text altered."""
    good = rig.file
    down = EnvoyAdminError("Envoy admin at http://127.0.0.1:9901 unreachable: refused")
    rig.envoy.fail_json = down
    failed(rig, rig.sink.apply(plan({S1: 6})), str(down))
    assert rig.file == good


def test_a_plan_that_would_drain_every_endpoint_is_refused_before_writing(rig: Rig) -> None:
    """Kills: the all-draining check altered, the written weight of a refusal altered."""
    good = rig.file
    report = rig.sink.apply(plan({S1: 0, S2: 0, S3: 0}))
    error = "not written: cluster app: the plan would drain every endpoint"
    assert outcome(report) == [(s, GOOD[s], 1, None, error) for s in (S1, S2, S3)]
    assert rig.file == good
    assert rig.envoy.paths == []


def test_a_server_without_any_weight_fails_its_cluster_unwritten(rig: Rig) -> None:
    """Kills: the missing-weight check inverted or its message altered."""
    servers = (
        ServerPlan("app", S1, "UP", 3, 6, 3, 0.9, "model"),
        ServerPlan("app", S2, "UP", None, None, None, 0.0, "hold: weight unknown"),
    )
    pool = PoolPlan("app", "eds", "model", 0.9, "model", servers)
    report = rig.sink.apply(WeightPlan(WHEN, (pool,)))
    failed(rig, report, f"not written: {S2}: no weight known, so the assignment cannot be written")


@pytest.mark.parametrize("kind", ["not UTF-8", "a directory"])
def test_a_current_file_that_cannot_be_read_fails_the_cluster_unwritten(
    rig: Rig, kind: str
) -> None:
    """Kills: the last good file read without its error handling."""
    path = eds_path(rig.envoy.eds_dir, "app")
    path.unlink()
    if kind == "a directory":
        path.mkdir()
    else:
        path.write_bytes(b"\xff\xfe not utf-8")
    report = rig.sink.apply(plan({S1: 6}))
    (result,) = report.results
    assert result.error.startswith(f"not written: cannot read the current {path}: ")
    assert rig.envoy.paths == []


def test_without_a_previous_file_a_rejected_one_has_nothing_to_put_back(rig: Rig) -> None:
    """Kills: ``previous is None`` inverted (it would write None)."""
    eds_path(rig.envoy.eds_dir, "app").unlink()
    rig.envoy.accept = False
    report = rig.sink.apply(plan({S1: 6}))
    failed(rig, report, "Envoy rejected the file (update_rejected rose); last good kept")
    assert served_file(rig.file)[S1] == (6, "")


def test_a_last_good_file_that_cannot_be_put_back_is_counted(rig: Rig) -> None:
    """The EDS directory vanishes while the update is being confirmed. Kills: the
    restore's failure not counted, or counted under another name."""
    rig.envoy.accept = False
    eds_dir = rig.envoy.eds_dir

    def vanish() -> None:
        if rig.envoy.rejected and eds_dir.is_dir():
            shutil.rmtree(eds_dir)
            eds_dir.write_text("not a directory")

    rig.envoy.on_call.append(vanish)
    rig.sink.apply(plan({S1: 6}))
    assert rig.events.count("eds_restore_failed") == 1
    assert rig.logged.messages[0].startswith(
        f"eds_restore_failed: cannot write app.yaml in the EDS directory {eds_dir}: "
    )


def test_every_changed_cluster_is_written_and_reported(rig: Rig) -> None:
    """Kills: each cluster's results replacing the ones before instead of adding to them."""
    write_eds(rig.envoy.eds_dir, "web", render_eds("web", endpoints(GOOD), "good"))
    web = FakeEnvoy(rig.envoy.eds_dir, "web")
    sink = EnvoySink(FakeEnvoys(rig.envoy, web), rig.envoy.eds_dir, 1.0, rig.events)
    app_plan, web_plan = plan({S1: 6}), plan({S2: 4})
    web_pool = replace(web_plan.pools[0], backend="web")
    web_pool = replace(web_pool, servers=tuple(s._replace(backend="web") for s in web_pool.servers))
    report = sink.apply(WeightPlan(WHEN, (*app_plan.pools, web_pool)))
    assert [(r.backend, r.server, r.confirmed_weight, r.error) for r in report.results] == [
        ("app", S1, 6, ""),
        ("web", S2, 4, ""),
    ]
    assert (rig.envoy.serving[S1], web.serving[S2]) == (6, 4)


def test_an_operators_templates_write_the_file(rig: Rig, tmp_path: Path) -> None:
    """``templates_dir`` holds an adapted ``envoy/eds.yaml.j2``. Kills: the directory not
    kept, or not passed to the renderer."""
    shipped = files("veloflux.templates").joinpath("envoy/eds.yaml.j2").read_text()
    adapted = shipped.replace("{{ version | tojson }}", '{{ ("ops-" ~ version) | tojson }}')
    assert adapted != shipped
    (tmp_path / "ops" / "envoy").mkdir(parents=True)
    (tmp_path / "ops" / "envoy" / "eds.yaml.j2").write_text(adapted)
    sink = EnvoySink(rig.envoy, rig.envoy.eds_dir, 1.0, rig.events, templates_dir=tmp_path / "ops")
    assert outcome(sink.apply(plan({S1: 6}))) == [(S1, 3, 6, 6, "")]
    assert json.loads(rig.file)["version_info"] == f"ops-{WHEN.isoformat()}"
