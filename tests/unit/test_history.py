"""The journal (real SQLite files in tmp_path) and derive_rates (pure, hand-checked)."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.factories import Pool, Server
from tests.unit.factories import observation as factory_observation
from veloflux.domain.observation import (
    ExternalFeatures,
    Observation,
    PoolInfo,
    ProxyIdentity,
    ServerRow,
)
from veloflux.history.frames import STORED_COLUMNS, journal_frame
from veloflux.history.journal import CACHE_KIB, SCHEMA_VERSION, HistoryError, Journal
from veloflux.history.rates import EMA_SAMPLES, RATE_COLUMNS, derive_rates, interval_mean
from veloflux.history.window import RecentWindow
from veloflux.util.events import Events

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
A = 1 - 1 / EMA_SAMPLES
NAN = math.nan


def server_row(time: datetime, pool: str, server: str, **fields: Any) -> ServerRow:
    values: dict[str, Any] = {
        "time": time, "source": "haproxy", "pool": pool, "server": server,
        "address": "127.0.0.1:9", "state": "UP", "backup": False, "weight": 10.0,
        "initial_weight": 10.0, "algorithm": "roundrobin", "sessions": 2.0, "queue": 0.0,
        "session_rate": 3.0, "sessions_total": 100.0, "requests_total": 120.0,
        "responses_5xx_total": 1.0, "response_errors_total": 0.0, "connect_errors_total": 0.0,
        "queue_time": 0.0, "connect_time": 0.001, "response_time": 0.02, "total_time": 0.03,
        "since_state_change": 60.0, "check_status": "", "problem": "",
    }  # fmt: skip
    values.update(fields)
    return ServerRow(**values)


def observation(time: datetime, rows: list[ServerRow], pid: int = 100) -> Observation:
    pools = tuple(PoolInfo(p, "roundrobin", True) for p in dict.fromkeys(r.pool for r in rows))
    proxy = ProxyIdentity("unix:///tmp/admin.sock", pid, 1.7e9 + pid, 60.0, "2.6.12", "admin")
    return Observation(time, tuple(rows), pools, proxy)


def snapshot(time: datetime, servers: dict[str, dict[str, Any]], pid: int = 100) -> Observation:
    """One observation of pool ``app``; ``servers`` maps names to overridden fields."""
    rows = [server_row(time, "app", name, **fields) for name, fields in servers.items()]
    return observation(time, rows, pid)


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def journal(tmp_path: Path, events: Events) -> Any:
    with Journal(tmp_path / "history.db", events) as j:
        yield j


# --- the journal -------------------------------------------------------------------------


def test_round_trip_keeps_every_value_and_nan_stays_nan(journal: Journal) -> None:
    rows = [
        server_row(T0, "app", "b", backup=True, problem="stale row", state="DRAIN"),
        server_row(T0, "app", "a", weight=NAN, response_time=NAN, requests_total=NAN),
        server_row(T0, "api", "z", initial_weight=NAN, queue=NAN, connect_errors_total=7.0),
    ]
    written = observation(T0, rows, pid=4242)
    assert journal.append(written) == 3
    back = journal.read()
    assert list(back.columns) == list(STORED_COLUMNS)
    expected = written.frame[list(STORED_COLUMNS[:-2])].assign(
        proxy_pid=4242, proxy_started=1.7e9 + 4242
    )
    expected = expected.sort_values(["pool", "server", "time"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(back, expected)
    a = back.set_index("server").loc["a"]
    for column in ("weight", "response_time", "requests_total"):
        assert pd.isna(a[column]), column
    raw = sqlite3.connect(journal.path)
    assert raw.execute("SELECT COUNT(*) FROM samples WHERE weight IS NULL").fetchone() == (1,)
    raw.close()


def test_observation_from_frame_with_numpy_values_round_trips(journal: Journal) -> None:
    written = factory_observation([Pool("app", [Server("s1"), Server("s2", weight=None)])])
    assert journal.append(written) == 2
    back = journal.read()
    assert back["server"].tolist() == ["s1", "s2"]
    assert back["weight"].iloc[0] == 10
    assert math.isnan(back["weight"].iloc[1])
    assert (back["time"] == pd.Timestamp(written.taken_at)).all()


def test_schema_version_and_indexes_exist_and_reopening_keeps_rows(
    tmp_path: Path, events: Events
) -> None:
    path = tmp_path / "history.db"
    with Journal(path, events) as journal:
        journal.append(snapshot(T0, {"a": {}}))
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    indexes = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"samples_by_server", "samples_by_time"} <= indexes
    assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    raw.close()
    with Journal(path, events) as journal:
        assert journal.count() == 1


def test_count_and_span(journal: Journal) -> None:
    assert journal.count() == 0
    assert journal.span() is None
    for step in range(3):
        journal.append(snapshot(T0 + timedelta(seconds=10 * step), {"a": {}, "b": {}}))
    assert journal.count() == 6
    assert journal.span() == (T0, T0 + timedelta(seconds=20))


def test_read_filters_by_time_and_pool_and_sorts(journal: Journal) -> None:
    for step in range(3):
        at = T0 + timedelta(seconds=10 * step)
        rows = [server_row(at, p, s) for p, s in (("web", "b"), ("app", "z"), ("web", "a"))]
        journal.append(observation(at, rows))
    everything = journal.read()
    keys = list(zip(everything["pool"], everything["server"], everything["time"], strict=True))
    assert keys == sorted(keys)
    assert set(journal.read(since=T0 + timedelta(seconds=10))["time"]) == {
        pd.Timestamp(T0 + timedelta(seconds=10)),
        pd.Timestamp(T0 + timedelta(seconds=20)),
    }
    assert set(journal.read(until=T0 + timedelta(seconds=10))["time"]) == {pd.Timestamp(T0)}
    window = journal.read(since=T0 + timedelta(seconds=5), until=T0 + timedelta(seconds=15))
    assert len(window) == 3
    assert set(journal.read(pools=["app"])["server"]) == {"z"}
    assert len(journal.read(pools="web")) == 6
    empty = journal.read(pools=[])
    assert empty.empty
    assert list(empty.columns) == list(STORED_COLUMNS)


def _sorted(rates: pd.DataFrame) -> pd.DataFrame:
    return rates.sort_values(["pool", "server", "time"], ignore_index=True)


def test_the_recent_window_gives_the_rates_a_fresh_derivation_gives(journal: Journal) -> None:
    """Tick after tick (a reload, a counter reset, a server that leaves and comes back
    after the span, an idle gap), the window's rates equal ``derive_rates`` over a fresh
    read of the span plus the current rows; it reads the journal only once."""
    journal.append(snapshot(T0 - timedelta(seconds=10), {"z": {}, "y": {}}))
    window = RecentWindow(journal, span_seconds=25)
    reads = 0
    real_read = journal.read

    def counting_read(*args: Any, **kwargs: Any) -> pd.DataFrame:
        nonlocal reads
        reads += 1
        return real_read(*args, **kwargs)

    journal.read = counting_read  # type: ignore[method-assign]
    for step in range(12):
        at = T0 + timedelta(seconds=10 * step + (30 if step >= 8 else 0))  # a gap at 8
        servers = ["z"] + (["y"] if step < 2 or step > 6 else []) + (["x"] if step > 3 else [])
        rows = [
            server_row(
                at,
                "app",
                s,
                requests_total=(100.0 + 7 * step) if step != 5 else 3.0,  # 5: counter reset
                queue=NAN if step % 3 else 1.0,
            )
            for s in servers
        ]
        current = journal_frame(observation(at, rows, pid=7 if step < 6 else 8))  # reload at 6
        rates, newest = window.rates(at, current)
        journal.read = real_read  # type: ignore[method-assign]
        history = journal.read(since=at - timedelta(seconds=25))
        journal.read = counting_read  # type: ignore[method-assign]
        fresh = derive_rates(pd.concat([history, current], ignore_index=True))
        pd.testing.assert_frame_equal(_sorted(rates), _sorted(fresh), rtol=1e-9)
        assert newest == (history["time"].max() if len(history) else None)
        journal.append(observation(at, rows, pid=7 if step < 6 else 8))
        window.add(current)
    assert reads == 1


def test_the_window_ignores_samples_another_recorder_wrote_after_the_observation(
    journal: Journal,
) -> None:
    """A one-shot ``dry-run`` beside a recording daemon: the daemon's sample taken after
    the dry-run's observation is in the journal when the window first reads it. The
    rates end at the observation, one row per server at each instant."""
    for step in range(3):
        journal.append(snapshot(T0 + timedelta(seconds=10 * step), {"a": {}, "b": {}}))
    at = T0 + timedelta(seconds=25)
    journal.append(snapshot(at + timedelta(seconds=1), {"a": {}, "b": {}}))  # the daemon's
    current = journal_frame(snapshot(at, {"a": {}, "b": {}}))
    rates, newest = RecentWindow(journal, span_seconds=60).rates(at, current)
    assert newest == pd.Timestamp(T0 + timedelta(seconds=20))
    assert rates["time"].max() == pd.Timestamp(at)
    assert not rates.duplicated(["pool", "server", "time"]).any()
    assert set(rates.loc[rates["time"] == pd.Timestamp(at), "server"]) == {"a", "b"}


def test_prune_deletes_rows_older_than_retention(tmp_path: Path, events: Events) -> None:
    with Journal(tmp_path / "h.db", events, retention_seconds=100) as journal:
        for seconds in (0, 50, 150):
            journal.append(snapshot(T0 + timedelta(seconds=seconds), {"a": {}, "b": {}}))
        assert journal.prune(T0 + timedelta(seconds=200)) == 4
        assert journal.span() == (T0 + timedelta(seconds=150),) * 2
        assert journal.prune(T0 + timedelta(seconds=200)) == 0


def test_append_prunes_at_most_once_an_hour(tmp_path: Path, events: Events) -> None:
    with Journal(tmp_path / "h.db", events, retention_seconds=60) as journal:
        journal.append(snapshot(T0, {"a": {}}))
        journal.append(snapshot(T0 + timedelta(seconds=120), {"a": {}}))
        assert journal.count() == 2  # T0 is past retention, but the hour has not passed
        journal.append(snapshot(T0 + timedelta(hours=1), {"a": {}}))
        assert journal.count() == 1


def test_reading_while_another_journal_writes_sees_whole_observations(
    tmp_path: Path, events: Events
) -> None:
    path = tmp_path / "shared.db"
    servers: dict[str, dict[str, Any]] = {f"s{i}": {} for i in range(50)}
    done = threading.Event()
    failures: list[BaseException] = []

    def write() -> None:
        try:
            with Journal(path, Events()) as writer:
                for step in range(200):
                    writer.append(snapshot(T0 + timedelta(seconds=step), servers))
        except BaseException as exc:
            failures.append(exc)
        finally:
            done.set()

    with Journal(path, events) as reader:
        thread = threading.Thread(target=write)
        thread.start()
        sizes = []
        while not done.is_set():
            sizes.append(len(reader.read()))
        thread.join(30)
        final = reader.read()
    assert not failures
    assert all(n % 50 == 0 for n in sizes)  # one transaction per observation
    assert sizes == sorted(sizes)
    assert len(final) == 200 * 50
    assert any(0 < n < 200 * 50 for n in sizes)  # some reads overlapped the writing


# --- bad input -----------------------------------------------------------------------


def _assert_refused(path: Path, events: Events, kind: str, *words: str) -> None:
    with pytest.raises(HistoryError) as caught:
        Journal(path, events, busy_timeout_seconds=0.2)
    message = str(caught.value)
    assert str(path) in message
    for word in words:
        assert word in message
    assert events.count(kind, path=str(path)) == 1


def test_a_directory_is_refused(tmp_path: Path, events: Events) -> None:
    _assert_refused(tmp_path, events, "history_open_failed", "is a directory")


def test_an_unwritable_path_is_refused(tmp_path: Path, events: Events) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    _assert_refused(blocker / "history.db", events, "history_open_failed", "opening failed")


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path, events: Events) -> None:
    path = tmp_path / "history.db"
    path.write_bytes(b"this is a CSV export, not a database\n" * 100)
    _assert_refused(path, events, "history_open_failed", "not a database")
    assert path.read_bytes().startswith(b"this is a CSV export")  # left untouched


def test_a_foreign_sqlite_database_is_refused(tmp_path: Path, events: Events) -> None:
    path = tmp_path / "other.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE invoices (id INTEGER)")
    raw.commit()
    raw.close()
    _assert_refused(path, events, "history_open_failed", "not a VeloFlux journal")


def test_a_journal_of_another_schema_version_is_refused(tmp_path: Path, events: Events) -> None:
    path = tmp_path / "history.db"
    Journal(path, events).close()
    raw = sqlite3.connect(path)
    raw.execute("UPDATE schema_version SET version = 99")
    raw.commit()
    raw.close()
    _assert_refused(path, events, "history_open_failed", "schema version 99")


_HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


def test_a_lock_held_by_another_process_beyond_the_timeout(tmp_path: Path, events: Events) -> None:
    path = tmp_path / "history.db"
    with Journal(path, events, busy_timeout_seconds=0.2) as journal:
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline() == "locked\n"
            with pytest.raises(HistoryError) as caught:
                journal.append(snapshot(T0, {"a": {}}))
            assert journal.read().empty  # readers are not blocked by the writer (WAL)
        finally:
            holder.communicate("", timeout=10)
        message = str(caught.value)
        assert str(path) in message
        assert "locked" in message
        assert "0.2s" in message
        assert events.count("history_write_failed", path=str(path)) == 1
        assert journal.append(snapshot(T0, {"a": {}})) == 1  # fine once the lock is gone


def test_a_full_disk_rolls_back_and_is_reported(journal: Journal, events: Events) -> None:
    journal.append(snapshot(T0, {"a": {}}))
    # SQLite's own size limit raises the same SQLITE_FULL a full disk does.
    conn = journal._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    big = snapshot(T0 + timedelta(seconds=10), {f"s{i}": {} for i in range(1000)})
    with pytest.raises(HistoryError, match="disk is full") as caught:
        journal.append(big)
    assert str(journal.path) in str(caught.value)
    assert events.count("history_write_failed") == 1
    assert journal.count() == 1  # the failed observation left nothing behind
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert journal.append(big) == 1000


def test_unconvertible_values_are_refused_without_writing(journal: Journal, events: Events) -> None:
    bad = snapshot(T0, {"a": {}, "b": {"weight": "heavy"}})
    with pytest.raises(HistoryError, match="converting the observation"):
        journal.append(bad)
    assert events.count("history_write_failed") == 1
    assert journal.count() == 0


def test_a_read_that_fails_is_reported(journal: Journal, events: Events) -> None:
    raw = sqlite3.connect(journal.path)
    raw.execute("DROP TABLE samples")
    raw.commit()
    raw.close()
    with pytest.raises(HistoryError, match="no such table") as caught:
        journal.read()
    assert str(journal.path) in str(caught.value)
    assert events.count("history_read_failed", path=str(journal.path)) == 1


def test_a_closed_journal_says_so(journal: Journal) -> None:
    journal.close()
    journal.close()  # idempotent
    with pytest.raises(HistoryError, match="closed"):
        journal.count()


def test_naive_times_and_bad_settings_are_programming_errors(
    tmp_path: Path, journal: Journal, events: Events
) -> None:
    with pytest.raises(ValueError, match="time zone"):
        journal.read(since=datetime(2024, 5, 1))
    with pytest.raises(ValueError, match="retention"):
        Journal(tmp_path / "x.db", events, retention_seconds=0)
    with pytest.raises(ValueError, match="busy_timeout"):
        Journal(tmp_path / "x.db", events, busy_timeout_seconds=math.inf)


# --- derive_rates ------------------------------------------------------------------------


def ema(avg: float, value: float, requests: int) -> float:
    """HAProxy's average after ``requests`` more requests of ``value``, one at a time."""
    for _ in range(requests):
        avg = value + (avg - value) * A
    return avg


def haproxy_average(avg: float, count: int, value: float, requests: int) -> float:
    """HAProxy 2.6's swrate_add_dynamic + swrate_avg, in floats (no ms rounding)."""
    total = avg * min(count, EMA_SAMPLES)
    for done in range(count + 1, count + requests + 1):
        total = total + value if done <= EMA_SAMPLES else total - total / EMA_SAMPLES + value
    return total / min(count + requests, EMA_SAMPLES)


def samples(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A frame shaped like ``Journal.read``; times are seconds after T0."""
    defaults: dict[str, Any] = dict.fromkeys(STORED_COLUMNS[6:-3], 0.0)
    defaults |= {"source": "haproxy", "pool": "app", "state": "UP", "backup": False}
    defaults |= {"problem": "", "proxy_pid": 100, "proxy_started": 1.7e9}
    frame = pd.DataFrame([defaults | r for r in rows])
    frame["time"] = pd.Timestamp(T0) + pd.to_timedelta(frame["time"], unit="s")
    return frame[list(STORED_COLUMNS)]


def test_derive_rates_hand_computed_two_servers_three_samples() -> None:
    fast_1 = ema(0.010, 0.020, 100)
    slow_1, slow_2 = ema(0.200, 0.100, 50), ema(ema(0.200, 0.100, 50), 0.300, 100)
    frame = samples(
        [
            {"server": "fast", "time": 0, "requests_total": 1000, "responses_5xx_total": 0,
             "response_errors_total": 0, "response_time": 0.010, "weight": 10},
            {"server": "fast", "time": 10, "requests_total": 1100, "responses_5xx_total": 5,
             "response_errors_total": 1, "response_time": fast_1, "weight": 12},
            {"server": "fast", "time": 20, "requests_total": 1100, "responses_5xx_total": 5,
             "response_errors_total": 1, "response_time": fast_1, "weight": 14},
            {"server": "slow", "time": 0, "requests_total": 2000, "connect_errors_total": 10,
             "response_time": 0.200},
            {"server": "slow", "time": 10, "requests_total": 2050, "connect_errors_total": 60,
             "response_time": slow_1},
            {"server": "slow", "time": 30, "requests_total": 2150, "connect_errors_total": 60,
             "response_time": slow_2, "sessions": 7, "queue": 3},
        ]
    )  # fmt: skip
    rates = derive_rates(frame.iloc[::-1])  # input order must not matter
    assert list(rates.columns) == list(RATE_COLUMNS)
    assert list(zip(rates["server"], rates["interval_seconds"], strict=True)) == [
        ("fast", 10.0), ("fast", 10.0), ("slow", 10.0), ("slow", 20.0),
    ]  # fmt: skip
    assert rates["weight"].tolist() == [12, 14, 0, 0]
    assert rates["requests"].tolist() == [100, 0, 50, 100]
    assert rates["request_rate"].tolist() == [10.0, 0.0, 5.0, 5.0]
    assert rates["errors"].tolist() == [6, 0, 50, 0]
    np.testing.assert_allclose(rates["error_rate"], [0.06, NAN, 1.0, 0.0])
    np.testing.assert_allclose(
        rates["interval_response_time"], [0.020, NAN, 0.100, 0.300], rtol=1e-12
    )
    assert not rates["reset"].any()
    assert rates[["sessions", "queue"]].iloc[3].tolist() == [7, 3]
    assert rates["response_time"].iloc[3] == slow_2


def test_the_first_512_requests_are_a_running_mean_as_haproxy_measures() -> None:
    # Measured on HAProxy 2.6.12: a fresh server read 42 ms after 100 requests of
    # 42 ms, then 24 ms after 100 more of 6 ms (a running mean, not the EMA).
    frame = samples(
        [
            {"server": "x", "time": 0, "requests_total": 0, "response_time": 0.0},
            {"server": "x", "time": 1, "requests_total": 100, "response_time": 0.042},
            {"server": "x", "time": 2, "requests_total": 200, "response_time": 0.024},
        ]
    )
    np.testing.assert_allclose(
        derive_rates(frame)["interval_response_time"], [0.042, 0.006], rtol=1e-12
    )


@pytest.mark.parametrize(
    ("change", "label"),
    [
        ({"requests_total": 40}, "a counter went down"),
        ({"responses_5xx_total": 0}, "an error counter went down"),
        ({"proxy_pid": 101, "requests_total": 5000}, "a reload with counters that grew"),
        ({"proxy_started": 1.8e9}, "a new start time"),
    ],
)
def test_a_reset_gives_nan_and_is_flagged(change: dict[str, Any], label: str) -> None:
    base = {"server": "a", "requests_total": 1000, "responses_5xx_total": 5}
    frame = samples(
        [
            base | {"time": 0},
            base | {"time": 10} | change,
            base
            | {"time": 20}
            | change
            | {"requests_total": change.get("requests_total", 1000) + 30},
        ]
    )
    rates = derive_rates(frame)
    first, after = rates.iloc[0], rates.iloc[1]
    assert first["reset"], label
    for column in ("requests", "request_rate", "errors", "error_rate", "interval_response_time"):
        assert math.isnan(first[column]), column
    assert not after["reset"]
    assert after["requests"] == 30
    assert after["request_rate"] == 3.0


def test_zero_traffic_is_not_zero_errors_and_says_nothing_about_latency() -> None:
    frame = samples(
        [
            {"server": "idle", "time": 0, "requests_total": 700, "response_time": 0.05},
            {"server": "idle", "time": 10, "requests_total": 700, "response_time": 0.05},
        ]
    )
    rate = derive_rates(frame).iloc[0]
    assert rate["request_rate"] == 0.0
    assert rate["errors"] == 0.0
    assert math.isnan(rate["error_rate"])
    assert math.isnan(rate["interval_response_time"])
    assert math.isnan(rate["interval_total_time"])


def test_nan_counters_and_bad_intervals_give_nan_only_where_they_matter() -> None:
    frame = samples(
        [
            {"server": "a", "time": 0, "requests_total": 1000, "responses_5xx_total": NAN},
            {"server": "a", "time": 10, "requests_total": 1100, "responses_5xx_total": 3},
            {"server": "a", "time": 10, "requests_total": 1150, "responses_5xx_total": 4},
            {"server": "b", "time": 0, "requests_total": 1000, "response_time": NAN},
            {"server": "b", "time": 10, "requests_total": 1010, "response_time": 0.05},
        ]
    )
    rates = derive_rates(frame)
    a1, a2, b1 = rates.iloc[0], rates.iloc[1], rates.iloc[2]
    assert a1["request_rate"] == 10.0
    assert math.isnan(a1["errors"])
    assert math.isnan(a1["error_rate"])
    assert not a1["reset"]
    assert a2["interval_seconds"] == 0
    assert math.isnan(a2["request_rate"])
    assert a2["requests"] == 50
    assert a2["errors"] == 1
    assert b1["request_rate"] == 1.0
    assert math.isnan(b1["interval_response_time"])


def test_derive_rates_of_nothing_and_of_a_malformed_frame() -> None:
    empty = derive_rates(samples([{"server": "a", "time": 0}]).iloc[:0])
    assert empty.empty
    assert list(empty.columns) == list(RATE_COLUMNS)
    assert derive_rates(samples([{"server": "a", "time": 0}])).empty
    with pytest.raises(ValueError, match="requests_total"):
        derive_rates(samples([{"server": "a", "time": 0}]).drop(columns="requests_total"))


def test_derive_rates_reads_what_the_journal_wrote(journal: Journal) -> None:
    for step, (total, rtime) in enumerate([(600, 0.02), (700, 0.02), (800, 0.03)]):
        at = T0 + timedelta(seconds=5 * step)
        journal.append(snapshot(at, {"a": {"requests_total": total, "response_time": rtime}}))
    rates = derive_rates(journal.read())
    assert rates["request_rate"].tolist() == [20.0, 20.0]
    expected_last = (0.03 - 0.02 * A**100) / (1 - A**100)
    assert rates["interval_response_time"].iloc[1] == pytest.approx(expected_last, rel=1e-12)


# Float tolerance of the inversion: simulating k EMA steps accumulates at most ~2k ulps
# of M = max(avg_old, v); dividing by 1 - a**k (>= ~k/N for small k) amplifies an error
# in avg_new by at most ~N/k. Either way the error stays below ~2 * (N + k) * eps * M
# ~ 1.1e-12 M, so 1e-10 M leaves a 100-fold margin while catching any wrong formula.
# The femtosecond floor covers subnormal inputs, far below any clock's resolution.
TOLERANCE, FLOOR_SECONDS = 1e-10, 1e-15
seconds_values = st.floats(min_value=0.0, max_value=60.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(avg_old=seconds_values, value=seconds_values, k=st.integers(1, 2000))
def test_the_ema_inversion_recovers_the_interval_mean(avg_old: float, value: float, k: int) -> None:
    avg_new = ema(avg_old, value, k)
    got = interval_mean(
        np.array([avg_old]), np.array([avg_new]), np.array([10_000.0]), np.array([float(k)])
    )[0]
    assert abs(got - value) <= TOLERANCE * max(avg_old, value) + FLOOR_SECONDS


@settings(max_examples=300, deadline=None)
@given(
    avg_old=seconds_values, value=seconds_values,
    count=st.integers(0, 1500), k=st.integers(1, 2000),
)  # fmt: skip
def test_the_inversion_covers_haproxy_warm_up(
    avg_old: float, value: float, count: int, k: int
) -> None:
    avg_old = avg_old if count else 0.0  # HAProxy shows 0 before the first request
    avg_new = haproxy_average(avg_old, count, value, k)
    got = interval_mean(
        np.array([avg_old]), np.array([avg_new]), np.array([float(count)]), np.array([float(k)])
    )[0]
    assert abs(got - value) <= TOLERANCE * max(avg_old, value) + FLOOR_SECONDS


counter = st.one_of(st.just(NAN), st.floats(0, 1e12), st.integers(0, 10**6).map(float))
sample = st.fixed_dictionaries(
    {
        "server": st.sampled_from(["a", "b"]),
        "time": st.integers(0, 50).map(float),
        "proxy_pid": st.sampled_from([1, 2]),
        "requests_total": counter,
        "responses_5xx_total": counter,
        "response_errors_total": counter,
        "connect_errors_total": counter,
        "sessions_total": counter,
        "response_time": st.one_of(st.just(NAN), st.floats(0, 10)),
        "total_time": st.one_of(st.just(NAN), st.floats(0, 10)),
    }
)


@settings(max_examples=300, deadline=None)
@given(st.lists(sample, min_size=2, max_size=30))
def test_derive_rates_never_outputs_a_negative_number(rows: list[dict[str, Any]]) -> None:
    rates = derive_rates(samples(rows))
    for column in (
        "interval_seconds", "requests", "request_rate", "errors", "error_rate",
        "interval_response_time", "interval_total_time",
    ):  # fmt: skip
        values = rates[column].to_numpy(dtype=float)
        assert not (values < 0).any(), column
    assert not (rates["error_rate"] > 1).any()
    assert rates.loc[rates["reset"], "requests"].isna().all()
    assert len(rates) == len(rows) - samples(rows)["server"].nunique()


def test_envoy_latency_is_an_interval_figure_already_and_is_not_inverted() -> None:
    """HAProxy's rtime is a moving average to invert; Envoy's is the cluster's median
    over its last stats flush, so the interval latency is the reading itself."""
    rows = []
    for step, latency in enumerate((0.050, 0.020, 0.080)):
        at = T0 + timedelta(seconds=10 * step)
        for source in ("envoy", "haproxy"):
            rows.append(
                server_row(
                    at, source, "s1", source=source, response_time=latency,
                    requests_total=100.0 + 50 * step,
                )
            )  # fmt: skip
    frame = Observation.from_frame(T0, pd.DataFrame(rows), (), observation(T0, []).proxy).frame
    rates = derive_rates(frame.assign(proxy_pid=1))
    envoy = rates[rates["pool"] == "envoy"]
    haproxy = rates[rates["pool"] == "haproxy"]
    assert envoy["interval_response_time"].tolist() == [0.020, 0.080]
    assert haproxy["interval_response_time"].tolist() != [0.020, 0.080]


def test_the_journal_keeps_sqlites_page_cache_small(journal: Journal) -> None:
    """The default cache (2 MiB) grows with the file: the daemon's memory crept for an
    hour before it filled (docs/benchmarks.md, the daemon's RSS figure)."""
    (size,) = journal._connection().execute("PRAGMA cache_size").fetchone()
    assert size == -CACHE_KIB


# --- operator-defined (Prometheus) features ----------------------------------------------


def with_external(obs: Observation, **columns: tuple[float, ...]) -> Observation:
    values = tuple((f"prom_{name}", v) for name, v in columns.items())
    return obs.with_external(ExternalFeatures("prometheus", values))


def test_external_features_round_trip_and_nan_is_left_out(journal: Journal) -> None:
    first = with_external(snapshot(T0, {"a": {}, "b": {}}), cpu=(0.25, NAN))
    second = snapshot(T0 + timedelta(seconds=10), {"a": {}, "b": {}})  # Prometheus not set
    journal.append(first)
    journal.append(second)
    back = journal.read()
    assert "prom_cpu" in back.columns
    keys = zip(back["server"].tolist(), back["time"].tolist(), strict=True)
    by_key = dict(zip(keys, back["prom_cpu"].tolist(), strict=True))
    assert by_key[("a", pd.Timestamp(T0))] == 0.25
    assert math.isnan(by_key[("b", pd.Timestamp(T0))])  # NaN stays unknown, never 0
    assert math.isnan(by_key[("a", pd.Timestamp(T0 + timedelta(seconds=10)))])


def test_journal_without_external_features_reads_back_the_stored_columns_only(
    journal: Journal,
) -> None:
    journal.append(snapshot(T0, {"a": {}}))
    assert list(journal.read().columns) == list(STORED_COLUMNS)


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_journal_gains_the_columns_it_lacks_and_keeps_its_rows(
    tmp_path: Path, events: Events, version: int
) -> None:
    path = tmp_path / "old.db"
    with Journal(path, events) as journal:
        journal.append(snapshot(T0, {"a": {}}))
    # Make it look like ``version``: 1 had neither ``external`` nor ``max_sessions``.
    kept = [c for c in STORED_COLUMNS if c != "max_sessions"]
    if version == 2:
        kept.append("external")
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("CREATE TABLE s1 AS SELECT " + ", ".join(kept) + " FROM samples")
    raw.execute("DROP TABLE samples")
    raw.execute("ALTER TABLE s1 RENAME TO samples")
    raw.execute("UPDATE schema_version SET version = ?", (version,))
    raw.close()
    later = with_external(
        snapshot(T0 + timedelta(seconds=10), {"a": {"max_sessions": 8.0}}), cpu=(0.5,)
    )
    with Journal(path, events) as journal:
        journal.append(later)
        back = journal.read()
    assert len(back) == 2
    assert back["prom_cpu"].tolist()[1] == 0.5
    assert math.isnan(back["prom_cpu"].tolist()[0])
    assert back["max_sessions"].tolist()[1] == 8.0
    assert math.isnan(back["max_sessions"].tolist()[0])
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_rates_carry_external_features_at_the_interval_end() -> None:
    samples = pd.concat(
        [
            journal_frame(with_external(snapshot(T0, {"a": {}}), cpu=(0.1,))),
            journal_frame(
                with_external(
                    snapshot(T0 + timedelta(seconds=10), {"a": {"requests_total": 150.0}}),
                    cpu=(0.7,),
                )
            ),
        ],
        ignore_index=True,
    )
    rates = derive_rates(samples)
    assert list(rates.columns) == [*RATE_COLUMNS, "prom_cpu"]
    assert rates["prom_cpu"].tolist() == [0.7]


def test_a_start_time_a_second_off_is_not_a_reload() -> None:
    """Envoy's start time is the clock less a whole-second uptime: two readings that
    straddle a second differ by one without a restart. A restart still shows."""
    from veloflux.domain.observation import ProxyIdentity

    def identity(started: int, uptime: float, pid: int = 0) -> ProxyIdentity:
        return ProxyIdentity("http://127.0.0.1:1", pid, started, uptime, "", "admin")

    assert not identity(1001, 0.0).reloaded_since(identity(1000, 0.0))
    assert identity(1005, 0.0).reloaded_since(identity(1000, 4.0))
    assert identity(1003, 5.0).reloaded_since(identity(1000, 3.0))
    assert identity(1000, 5.0, pid=1).reloaded_since(identity(1000, 3.0))
