"""The chaos soak as a benchmark: ``python bench/soak.py --duration 2h --write``.

Runs ``integration.soak.run_soak`` (the daemon on the native stack while a seeded
scheduler injects faults, and the independent checker watches) for ``--duration``,
prints the figures as JSON, and with ``--write`` puts them into docs/reliability.md
between ``<!-- bench:soak -->`` and ``<!-- /bench:soak -->``: duration, ticks, faults
by kind, violations the checker found, recovery per fault kind (median and worst),
daemon crashes, journal rows lost, and the daemon's RSS. The same soak, a few
minutes long, is ``tests/integration/test_soak.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import argparse
import json
import tempfile
import time
from typing import Any

from bench.common import command, machine, print_result, table, write_doc_section
from integration.loadgen import parse_duration
from integration.soak import FAULT_WEIGHTS, SoakOptions, in_torn_lines, run_soak

DOC = ROOT / "docs" / "reliability.md"
MARK_BEGIN, MARK_END = "<!-- bench:soak -->", "<!-- /bench:soak -->"
HEADING = "## The chaos soak"
DOC_HEAD = """# Reliability

What VeloFlux was measured to do while everything around it failed. Each section is
written by the command it names, from what that command measured.
"""

PROSE = (
    "`veloflux-agent run` at a 1 s interval drives two HAProxy replicas (backend `app`, "
    "and `fixed`, static-rr, which it must never write), Envoy (cluster `app-envoy`, "
    "from an EDS directory) and reads Prometheus (the capacity rung's utilization), "
    "while demo backends take bounded load through all three entry points. A seeded "
    "scheduler injects a fault every 2-6 s (those on different parts overlap): HAProxy "
    "reload, restart and `kill -9`, a replica gone for 8-30 s; Envoy restarted and its EDS "
    "directory made read-only (a tmpfs remounted `ro`); Prometheus stopped and "
    "SIGSTOPped; the state directory's tmpfs filled to ENOSPC; SIGHUP with a valid or a "
    "broken config; a backend slowed 6x, failing 30-100%, or all restarted; a server put "
    "in MAINT or DRAIN, a weight set by hand; pause, pin and revert from the CLI; the "
    "daemon `kill -9`ed and started again.",
    "",
    "An independent checker (`python -m integration.invariants`, a process of its own "
    "that imports nothing from VeloFlux) reads every proxy every 100 ms with its own "
    "clients, tails the audit log, the daemon's log and the scheduler's event log, and "
    "records every violation of the rules (`integration/invariant_rules.py`; each rule "
    "and how it is made exact is in that module and in `tests/unit/test_invariants.py`): "
    "a weight out of bounds or beyond the step limit, fewer servers in rotation than "
    "the minimum, a MAINT/DRAIN server or a static-algorithm backend written, a pin "
    "not held, a write while paused, replicas apart for more than one tick, and a "
    "change on a proxy that no audit line and no injected fault explains.",
    "",
    "**Recovery** of a fault: from its end until a tick that began after it ended "
    "unpaused with every proxy read, and from then the checker saw every proxy answer "
    "with the weights VeloFlux last wrote (the replicas, Envoy and its EDS file equal). "
    "Faults overlap, so a recovery includes whatever else was broken meanwhile. "
    "**Journal rows lost**: ticks (from the daemon's log) whose HAProxy observation has "
    "no row in the journal; on a full disk and in the second before a `kill -9` that is "
    "by design, and counted apart.",
)


def render(r: dict[str, Any]) -> str:
    minutes = r["duration_seconds"] / 60
    j = r["journal"]
    rss = r["rss"]
    rows = [
        ("duration", f"{minutes:.0f} min of faults"),
        ("ticks", f"{r['ticks']} ({r['ticks_paused']} paused), {r['ticks_failed']} failed"),
        ("faults injected", str(r["faults"])),
        (
            "violations found by the checker",
            f"**{r['violations']}**"
            + (f" ({_by(r['violations_by_rule'])})" if r["violations"] else ""),
        ),
        (
            "of which: writes whose audit line was glued to a torn one",
            str(r.get("violations_in_torn_audit_lines", 0)),
        ),
        ("audit lines torn (not one JSON object)", str(r.get("audit_torn_lines", 0))),
        ("daemon crashes (exits not asked for)", str(r["daemon_crashes"])),
        ("daemon `kill -9`", str(r["daemon_kills"])),
        (
            "ticks observing HAProxy / journal rows found",
            f"{j.get('ticks_observing_haproxy')} / {j.get('rows_found')}",
        ),
        (
            "rows lost: on a full disk / at a kill -9 / otherwise",
            f"{j.get('lost_on_full_disk')} / {j.get('lost_at_kill')} / {j.get('lost_otherwise')}",
        ),
        (
            "daemon RSS: first start, last end",
            f"{rss['first_start_mb']} MB, {rss['last_end_mb']} MB",
        ),
        (
            "RSS over its longest life",
            f"{rss['longest_life_start_mb']} MB a minute in, "
            f"{rss['longest_life_end_mb']} MB after {rss['longest_life_seconds']} s",
        ),
        (
            "checker polls, changes seen, audit lines",
            f"{r['checker'].get('polls')}, {r['checker'].get('changes_seen')}, "
            f"{r['checker'].get('audit_lines')}",
        ),
    ]
    recovery = []
    for kind in (*FAULT_WEIGHTS, "resume", "unpin"):
        if kind not in r["faults_by_kind"]:
            continue
        rec = r["recovery"].get(kind, {})
        if kind in CLOSED_BY:
            recovery.append(
                (f"`{kind}`", str(r["faults_by_kind"][kind]), f"at `{CLOSED_BY[kind]}`", "", "")
            )
            continue
        recovery.append(
            (
                f"`{kind}`",
                str(r["faults_by_kind"][kind]),
                _s(rec.get("median_s")),
                _s(rec.get("worst_s")),
                str(rec.get("not_recovered", 0)),
            )
        )
    head = ("fault", "injected", "recovery median", "worst", "not recovered by the end")
    lines = [
        HEADING,
        "",
        *PROSE,
        "",
        MARK_BEGIN,
        f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} on {r['machine']['cpu']}, "
        f"{r['machine']['cores']} cores, Python {r['machine']['python']}; seed {r['seed']}"
        + ("" if r["mounts"] else " (no tmpfs: full disk and read-only EDS not injected)")
        + ".",
        f"Command: `{r['command']}` ({r['wall_seconds'] / 60:.0f} minutes in all)."
        + (
            " The violations were judged again after the run, from its recording "
            "(`bench/soak.py --rejudge`), by the checker committed with these figures; "
            f"the checker that watched the run live, before corrections of its own, "
            f"found {r['rejudged']}"
            + (f" ({_by(live)})" if (live := r.get("violations_live_by_rule")) else "")
            + (": what each was is below the table." if r["rejudged"] else ".")
            if r.get("rejudged") is not None
            else ""
        ),
        "",
        *table(("figure", "measured"), rows),
        "",
        *table(head, recovery),
        "",
        "`pause` and `revert` last until `resume`, `pin` until `unpin`: their recovery is "
        "that of the command that ends them.",
        MARK_END,
    ]
    return "\n".join(lines)


# Operator actions that last until another command ends them: their recovery is
# measured from that command (a pause is not over when its command returns).
CLOSED_BY = {"pause": "resume", "revert": "resume", "pin": "unpin"}


def _by(counts: dict[str, int]) -> str:
    return ", ".join(f"{rule} {n}" for rule, n in sorted(counts.items()))


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def rejudge(result: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """The run's violations judged again from its recording (``polls.jsonl``) by the
    checker as it is now: a checker corrected after a run judges that run without
    running it again. Every other figure stays as measured."""
    import subprocess

    violations = workdir / "violations-rejudged.jsonl"
    summary = workdir / "checker-rejudged.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "integration.invariants",
            "-c",
            str(workdir / "veloflux.initial.yaml"),
            "--replay",
            str(workdir / "polls.jsonl"),
            "--violations",
            str(violations),
            "--summary",
            str(summary),
        ],
        check=True,
        cwd=ROOT,
    )
    found = [json.loads(line) for line in violations.read_text().splitlines() if line]
    by_rule: dict[str, int] = {}
    for v in found:
        by_rule[v["rule"]] = by_rule.get(v["rule"], 0) + 1
    live = result["violations"]
    glued = in_torn_lines(workdir / "state-kept" / "audit.jsonl", found)
    return result | {
        "violations_in_torn_audit_lines": glued,
        "violations": len(found),
        "violations_by_rule": by_rule,
        "violation_examples": found[:20],
        "violations_live": live,
        "violations_live_by_rule": result.get("violations_live_by_rule")
        or result["violations_by_rule"],
        "rejudged": live,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="the chaos soak with its invariant checker")
    parser.add_argument("--duration", default="10m", help="time of faults: 10m, 2h")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--write", action="store_true", help="write docs/reliability.md")
    parser.add_argument("--out", type=Path, help="also write the JSON figures here")
    parser.add_argument("--keep", type=Path, help="keep the run's files in this directory")
    parser.add_argument(
        "--rejudge",
        type=Path,
        metavar="RESULT_JSON",
        help="no run: judge the kept run (--keep DIR, its --out RESULT_JSON) again",
    )
    opts = parser.parse_args()
    if opts.rejudge is not None:
        if opts.keep is None:
            parser.error("--rejudge needs --keep DIR, the run's kept directory")
        result = rejudge(json.loads(opts.rejudge.read_text()), opts.keep)
    else:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="veloflux-soak-") as tmp:
            workdir = opts.keep or Path(tmp)
            result = run_soak(SoakOptions(parse_duration(opts.duration), workdir, opts.seed))
        result |= {
            "machine": machine(),
            "command": command(Path(__file__), dropped=("--out", "--keep")),
            "wall_seconds": round(time.perf_counter() - started),
        }
    print_result(result, opts.out)
    if opts.write:
        write_doc_section(DOC, DOC_HEAD, render(result), HEADING, MARK_BEGIN, MARK_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
