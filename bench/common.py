"""What the benchmarks share: describing the machine, timing, telling how much of the
machine other processes took meanwhile, and writing their figures into
docs/benchmarks.md between their own markers, so the doc always shows what a command
in this repository measured.

A helper lives here once a second benchmark needs it: a benchmark module is a script,
and one benchmark importing another's private helpers would tie the two together.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from integration.stack import DemoServer

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
T = TypeVar("T")

# The local stack's four demo backends: the learning benchmark records its real journal
# from them, and the daemon benchmark runs the daemon on them for memory and idle CPU,
# so the doc describes them once.
REAL_SERVERS = (
    DemoServer("s1", concurrency=8, mean_ms=20),
    DemoServer("s2", concurrency=8, mean_ms=20),
    DemoServer("s3", concurrency=8, mean_ms=60),
    DemoServer("s4", concurrency=8, mean_ms=20, error_rate=0.2),
)
# From this share of the machine's CPU taken by other processes, a figure is flagged.
NOISY_SHARE = 0.1


# --- the machine and the command ----------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or 'unknown CPU'."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def machine() -> dict[str, Any]:
    """What the figures depend on. The libraries are imported here, not at the top, so
    that a benchmark that never needs XGBoost does not pay for it by importing this
    module; their own ``__version__`` is asked, since the distribution's name varies
    (``xgboost`` or ``xgboost-cpu``)."""
    import numpy
    import pandas
    import xgboost

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "xgboost": xgboost.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
    }


def command(script: Path, dropped: Sequence[str] = ()) -> str:
    """The command line that reproduces the figures, as run from the repository root.

    ``dropped`` names options (each with its value) that only keep a copy of the result,
    such as ``--out``: they change nothing the doc reports.
    """
    python = Path(sys.executable)
    shown = os.path.relpath(python, ROOT) if python.is_relative_to(ROOT) else str(python)
    args = sys.argv[1:]
    for option in dropped:
        if option in args:
            del args[args.index(option) : args.index(option) + 2]
    return shlex.join([shown, script.resolve().relative_to(ROOT).as_posix(), *args])


# --- timing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timed(Generic[T]):
    """A value, the wall time it took, and the CPU time of the thread that made it (its
    own work, whatever else wanted the cores meanwhile)."""

    wall_ms: float
    cpu_ms: float
    value: T


def timed(fn: Callable[[], T]) -> Timed[T]:
    """``fn()``, timed by the wall clock and by the calling thread's CPU clock."""
    wall, cpu = time.perf_counter(), time.thread_time()
    value = fn()
    return Timed((time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000, value)


def median_p95(samples: Sequence[float]) -> dict[str, float]:
    """The two figures every timing row of the doc gives: median, and p95 in brackets."""
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return {"median_ms": round(statistics.median(ordered), 2), "p95_ms": round(p95, 2)}


def rss_mb(pid: int | str = "self") -> float:
    """VmRSS of a process from /proc/PID/status, MB (this process by default)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no VmRSS in /proc/{pid}/status (has the process exited?)")


# --- CPU accounting: how much of the machine other processes took --------------------------


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat from field 3 (state) on; the command name may hold spaces."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of ``pid`` (plus its reaped children's, with ``children``)."""
    fields = _stat_fields(pid)
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds() -> float:
    """CPU seconds of this process and all its descendants, living or reaped: what a
    benchmark's own rig (proxies, backends, load, the daemon) used, not other people's."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, frontier = {os.getpid()}, [os.getpid()]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    total = 0.0
    for pid in tree:
        try:
            total += cpu_seconds(pid, children=True)
        except (OSError, ValueError, IndexError):
            continue  # it exited meanwhile; its parent's children counters have it
    return total


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine has used since boot (/proc/stat)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (ticks + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def with_noise(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()``, and the share of the machine's CPU that processes *not* started by this
    benchmark used meanwhile: other engineers' work on a shared machine inflates a
    figure, and the doc says by how much."""
    wall, busy, ours = time.perf_counter(), machine_busy_seconds(), tree_cpu_seconds()
    value = fn()
    elapsed = time.perf_counter() - wall
    others = (machine_busy_seconds() - busy) - (tree_cpu_seconds() - ours)
    share = others / (elapsed * (os.cpu_count() or 1)) if elapsed > 0 else 0.0
    return value, round(min(max(share, 0.0), 1.0), 3)


def noise_note(noise: dict[str, float], consequence: str = "") -> str:
    """The sentence under a section's heading that gives ``with_noise``'s shares, and
    warns when they are high enough to inflate the timings (``consequence`` adds what
    else that contention inflates for this benchmark)."""
    shares = ", ".join(f"{part} {share:.0%}" for part, share in noise.items())
    note = f"Share of the machine's CPU taken by other processes meanwhile: {shares}."
    if max(noise.values(), default=0.0) >= NOISY_SHARE:
        note += " Other work (other engineers' tests) was running, so these timings are inflated"
        note += f"; {consequence}." if consequence else "."
    return note


# --- docs/benchmarks.md --------------------------------------------------------------------


def yes(met: bool) -> str:
    """A target's "met?" cell: a miss is bold, so it stands out in the table."""
    return "yes" if met else "**no**"


def table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    """A markdown table as lines."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def provenance() -> str:
    """The line that dates a results block and names the code it measured: today's
    date (UTC) and the commit checked out, flagged when tracked files outside docs/
    differ from it (then the figures measured code no commit holds)."""
    import subprocess
    from datetime import UTC, datetime

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short=10", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs")
    changes = " with uncommitted changes" if dirty else ""
    return f"Run {datetime.now(UTC).date()} on commit `{commit}`{changes}."


def _stamped(section: str, begin: str) -> str:
    """``section`` with the provenance line right after its ``begin`` marker."""
    at = section.index(begin) + len(begin)
    return section[:at] + "\n" + provenance() + section[at:]


def replace_between(begin: str, end: str, section: str, doc: Path = DOC) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) in the doc,
    replacing the old one, or append it when the doc has none yet."""
    section = _stamped(section, begin)
    text = doc.read_text(encoding="utf-8")
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text, encoding="utf-8")


def replace_section(section: str, heading: str, begin: str, end: str, doc: Path = DOC) -> None:
    """Replace a benchmark's whole section (its ``heading``, prose and the text between
    ``begin`` and ``end``) with ``section``, or append it when the markers are absent."""
    section = _stamped(section, begin)
    text = doc.read_text(encoding="utf-8")
    if begin in text and end in text:
        start = text.index(begin)
        heading_at = text.rfind("\n## ", 0, start) + 1
        if heading_at > 0 and text.startswith(heading, heading_at):
            start = heading_at
        else:  # markers without our heading: keep what precedes them
            section = section[section.index(begin) :]
        stop = text.index(end) + len(end)
        text = text[:start] + section + text[stop:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text, encoding="utf-8")


def print_result(result: dict[str, Any], out: Path | None) -> None:
    """Print a benchmark's figures as JSON, and keep them in ``out`` when given."""
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")


def write_doc_section(
    doc: Path, doc_head: str, section: str, heading: str, begin: str, end: str
) -> None:
    """``replace_section`` into ``doc``, which starts as ``doc_head`` if it is new."""
    if not doc.exists():
        doc.write_text(doc_head, encoding="utf-8")
    replace_section(section, heading, begin, end, doc=doc)


# --- a benchmark's command line --------------------------------------------------------------


def measured_lines(r: dict[str, Any]) -> list[str]:
    """The lines under a section's markers that say where, how and amid what it ran."""
    m = r["machine"]
    return [
        f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} on {m['cpu']}, {m['cores']} "
        f"cores, Python {m['python']}.",
        f"Command: `{r['command']}` ({r['wall_seconds'] / 60:.0f} minutes in all).",
        noise_note({"run": r["other_cpu_share"]}),
    ]


def bench_main(
    script: Path,
    run: Callable[[bool, Path], dict[str, Any]],
    verdicts: Callable[[dict[str, Any]], dict[str, bool]],
    render: Callable[[dict[str, Any]], str],
    heading: str,
    marks: tuple[str, str],
) -> None:
    """The command line of a benchmark with one section: ``--quick`` (a smoke run that
    refuses ``--write``), ``--write`` (its section of docs/benchmarks.md), ``--out``
    (the JSON result); ``run(quick, workdir)`` measures in a temporary directory."""
    import argparse
    import json
    import tempfile
    import warnings

    parser = argparse.ArgumentParser(description=f"the benchmark of {script.name}")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md section")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    opts = parser.parse_args()
    if opts.quick and opts.write:
        parser.error("--quick figures are not the reported ones: drop --write")
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix=f"veloflux-{script.stem}-") as tmp,
        warnings.catch_warnings(),
    ):
        # Predictor._ood divides by zero inside np.where for every row: harmless.
        warnings.filterwarnings("ignore", "divide by zero", RuntimeWarning)
        result, noise = with_noise(lambda: run(opts.quick, Path(tmp)))
    result |= {
        "machine": machine(),
        "command": command(script, dropped=("--out",)),
        "other_cpu_share": noise,
        "wall_seconds": round(time.perf_counter() - started),
    }
    result["verdicts"] = verdicts(result)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if opts.out:
        opts.out.write_text(text + "\n", encoding="utf-8")
    if opts.write:
        replace_section(render(result), heading, *marks)


def table_section(
    heading: str,
    prose: Sequence[str],
    r: dict[str, Any],
    rows: Sequence[tuple[str, ...]],
    marks: tuple[str, str],
) -> str:
    """A section of docs/benchmarks.md: heading, what it measures, then between the
    markers where it ran and the table of figures against targets."""
    begin, end = marks
    head = ("figure", "measured", "target", "met?")
    lines = [heading, "", *prose, "", begin, *measured_lines(r), "", *table(head, rows), end]
    return "\n".join(lines)
