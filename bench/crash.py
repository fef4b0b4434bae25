"""Benchmark: crash consistency. ``kill -9`` the daemon and a model promoter at random
moments, a hundred times and more, and count the recoveries that found every file whole.

Reproduce with ``.venv/bin/python bench/crash.py --write`` from the repository root
(about five minutes on 2 cores). ``--quick`` runs ten kills and refuses ``--write``;
``--kills N`` and ``--seed S`` change the run; ``--out`` keeps the JSON result.

Each kill (``integration.crash.kill_once``): the daemon runs against a real HAProxy at
a 150 ms interval (journal appends on its writer thread, audit lines), an operator
thread pauses, resumes and pins through the API as fast as it answers (operator state
file, audit lines), and a child process promotes between two trained model versions in
a loop (registry's ``current``/``previous`` and metadata). At a moment drawn uniformly
from 0.3-2.5 s after the daemon answers, both processes get SIGKILL; then the journal,
the registry, the state file and the audit log are checked as the module says, and the
next daemon reopens them all.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import (
    command,
    machine,
    measured_lines,
    print_result,
    table,
    with_noise,
    write_doc_section,
    yes,
)

DOC = ROOT / "docs" / "reliability.md"
DOC_HEAD = (
    "# Reliability\n\n"
    "How VeloFlux behaves when things around it, and the agent itself, fail: each "
    "section is written by the benchmark that measured it.\n"
)
MARK_BEGIN, MARK_END = "<!-- bench:crash -->", "<!-- /bench:crash -->"
HEADING = "## Crash consistency: kill -9 in the middle of writes"
FULL_KILLS, QUICK_KILLS = 120, 10


def _progress(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def _verdicts(r: dict[str, Any]) -> dict[str, bool]:
    return {
        "at_least_100_kills": r["kills"] >= 100,
        "all_clean": r["clean"] == r["kills"],
        "at_most_one_tick_lost": r["ticks_lost_max"] <= 1,
    }


def _render(r: dict[str, Any]) -> str:
    v = r["verdicts"]
    failures = ", ".join(f"{k} {n}" for k, n in sorted(r["failures"].items())) or "none"
    rows = [
        (
            "kills (SIGKILL to daemon and promoter)",
            str(r["kills"]),
            ">= 100",
            yes(v["at_least_100_kills"]),
        ),
        ("clean recoveries", f"{r['clean']} of {r['kills']}", "all", yes(v["all_clean"])),
        ("failures by kind", failures, "none", yes(not r["failures"])),
        (
            "journal ticks lost per kill: max; kills that lost one",
            f"{r['ticks_lost_max']}; {r['kills_losing_a_tick']} of {r['kills']}",
            "<= 1",
            yes(v["at_most_one_tick_lost"]),
        ),
        (
            "journal rows lost: max per kill; total",
            f"{r['rows_lost_max']}; {r['rows_lost_total']} of the rows of "
            f"{r['ticks_logged']} logged ticks",
            "(reported)",
            "",
        ),
        ("observations dropped under a full writer queue", str(r["dropped"]), "(reported)", ""),
        ("torn last audit line", str(r["torn_audit_lines"]), "(reported)", ""),
        (
            "temp files of cut-short replacements left (swept once an hour old)",
            str(r["temp_files_left"]),
            "(reported)",
            "",
        ),
        (
            "writes acknowledged before the kills: operator actions; promotions",
            f"{r['operator_actions_acked']}; {r['promotions_acked']}",
            "(reported)",
            "",
        ),
        (
            "kills that came mid-promotion; mid-operator-action (request sent, no answer)",
            f"{r['kills_mid_promotion']}; {r['kills_mid_operator_action']}",
            "(reported)",
            "",
        ),
        (
            "restart to ready (journal, state, registry reopened): median; max",
            f"{r['restart_s_median']:.2f} s; {r['restart_s_max']:.2f} s",
            "(reported)",
            "",
        ),
    ]
    prose = [
        f"`bench/crash.py`: {r['kills']} times (seed {r['seed']}), the daemon runs against a "
        "real HAProxy at a 150 ms interval while an operator pauses, resumes and pins "
        "through the API as fast as it answers and a child process promotes between two "
        "trained model versions in a loop; at a moment uniform in "
        f"{r['delay_s'][0]}-{r['delay_s'][1]} s after the daemon answers, both get "
        "`kill -9`, so that kills land inside journal transactions, state-file and "
        "registry replacements and audit appends. A recovery is clean when: the journal "
        "opens with VeloFlux's `Journal`, `PRAGMA integrity_check` says `ok`, every row "
        "another connection saw committed is still there, and at most one tick the "
        "daemon logged is missing (the one in the writer's queue or transaction); the "
        "registry's current model verifies its checksums and is the last promotion "
        "acknowledged or the one in flight; the operator state file parses and equals "
        "the last acknowledged action's state or the one in flight; every audit line is "
        "whole JSON except possibly the last (the audit reader skips a line that does "
        "not parse), the log rotating at 8 KiB so that kills land in rotations too. "
        "Restart time is from spawning the next daemon to its `/-/ready`.",
    ]
    head = ("figure", "measured", "target", "met?")
    lines = [HEADING, "", *prose, "", MARK_BEGIN, *measured_lines(r), "", *table(head, rows)]
    return "\n".join([*lines, MARK_END])


def main() -> None:
    from integration.crash import run

    parser = argparse.ArgumentParser(description="kill -9 the daemon mid-write, check recovery")
    parser.add_argument("--kills", type=int, help=f"how many kills ({FULL_KILLS} by default)")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_KILLS} kills: a smoke run")
    parser.add_argument("--write", action="store_true", help="write docs/reliability.md section")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    opts = parser.parse_args()
    if opts.quick and opts.write:
        parser.error("--quick figures are not the reported ones: drop --write")
    kills = opts.kills or (QUICK_KILLS if opts.quick else FULL_KILLS)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="veloflux-crash-") as tmp:
        result, noise = with_noise(lambda: run(Path(tmp), kills, opts.seed, progress=_progress))
    result |= {
        "machine": machine(),
        "command": command(Path(__file__), dropped=("--out",)),
        "other_cpu_share": noise,
        "wall_seconds": round(time.perf_counter() - started),
    }
    result["verdicts"] = _verdicts(result)
    print_result(result, opts.out)
    if opts.write:
        write_doc_section(DOC, DOC_HEAD, _render(result), HEADING, MARK_BEGIN, MARK_END)
    if not all(result["verdicts"].values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
