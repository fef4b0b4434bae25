"""Where the second replica's time goes: ``bench/bench_replicas.py``'s rig under cProfile.

Reproduce with ``.venv/bin/python bench/profile_replicas.py`` from the repository root
(about a minute). The rig is the benchmark's (HAProxy C for the one-replica agent, A and
B for the two-replica one, the pool's 100 requests/s split the same way), ai off. Each
agent ticks 20 times under cProfile; printed per tick, in ms: the wall and thread-CPU
medians, then the cumulative time of the tick's steps (reading, merging, planning,
writing). cProfile inflates Python work, so the figures compare steps, they are not
the benchmark's timings.
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_replicas import FULL, _configs, rig
from veloflux.agent.build import build_daemon_agent
from veloflux.agent.ports import Driver
from veloflux.util.events import Events

TICKS = 20
# (label, the function's file suffix and name in cProfile's table)
STEPS = (
    ("observe (all replicas)", "agent/tick.py", "_observe"),
    ("  show stat parsed", "haproxy/replies.py", "parse_stat_table"),
    ("  show servers state parsed", "haproxy/replies.py", "parse_servers_state_columns"),
    ("  columns to numbers", "haproxy/source.py", "_build"),
    ("  replicas merged", "agent/replica_merge.py", "merge_readings"),
    ("  waiting on HAProxy (recv)", "~", "<method 'recv' of '_socket.socket' objects>"),
    ("plan", "decide/planner.py", "plan_weights"),
)


def _cumulative_ms(stats: pstats.Stats, suffix: str, name: str) -> float:
    total = 0.0
    for (filename, _, function), row in stats.stats.items():  # type: ignore[attr-defined]
        if function == name and filename.endswith(suffix):
            total += row[3]
    return total * 1000 / TICKS


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="veloflux-profile-replicas-") as tmp:
        work = Path(tmp)
        with rig(FULL, work) as sockets:
            single, pair = _configs(sockets, FULL, work, ai=False)
            for label, config in (("one replica", single), ("two replicas", pair)):
                _profile(label, build_daemon_agent(config, Events()))


def _profile(label: str, agent: Driver) -> None:
    tick = agent.tick
    tick(write=True)  # untimed: the first tick opens everything
    profile, walls, cpus = cProfile.Profile(), [], []
    for _ in range(TICKS):
        time.sleep(FULL.interval_seconds / 2)
        wall, cpu = time.perf_counter(), time.thread_time()
        profile.enable()
        tick(write=True)
        profile.disable()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.thread_time() - cpu) * 1000)
    agent.close()
    stats = pstats.Stats(profile)
    print(f"{label}: wall {statistics.median(walls):.1f} ms, CPU {statistics.median(cpus):.1f} ms")
    for step, suffix, name in STEPS:
        print(f"  {step:32} {_cumulative_ms(stats, suffix, name):6.1f} ms")


if __name__ == "__main__":
    main()
