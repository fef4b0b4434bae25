"""Mutation testing: does the unit suite notice when a safety rule is broken?

mutmut (3.x) changes one small thing at a time in the modules that carry the safety
rules (a ``<`` becomes ``<=``, a number grows by one, a string gains ``XX``...) and runs
the unit tests that reach the changed function; a mutant no test notices *survived*.
Each target below is one module (or the named functions of one), with the unit test
files relevant to it: only those run, never the integration suite.

mutmut finds a module's name from its path with ``src/`` stripped, and the package
lives in ``agent/veloflux``; so each target runs in its own throw-away copy of the
repository under ``build/mutation/TARGET/`` with the package laid out as
``src/veloflux`` (the installed layout: ``templates/`` inside it). Nothing in the
work tree is changed. Each test run is forked from a server process that has
collected the tests but run none (``process_isolation = "forkserver"``): a worker
forked from a process that had trained an XGBoost model would hang in OpenMP.

A survivor must either be killed by a new test or be *equivalent*: no observable
behaviour changes. Equivalent mutants are explained in docs/mutation.md, one table
row each (the mutant's name, its change: the first line it removes -> the first it
adds, and why); this script checks each explanation against the mutant's current
diff, so a stale one counts as unexplained. Each target's verdicts and its survivors'
diffs are kept in ``build/mutation/TARGET/outcome.json``, which ``--report`` reads.
For the strict targets (the planner's safety rules, the sinks' write path) every
survivor must be explained; the exit status says whether they are.

    .venv/bin/python bench/mutation.py [--write] [--jobs N] [--only TARGET ...]
    .venv/bin/python bench/mutation.py --report [--write] [--survivors]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_model, replace_section, table

BUILD = ROOT / "build" / "mutation"
EXPLAINED = ROOT / "docs" / "mutation.md"
HEADING = "## Mutation testing: the safety rules' tests"
MARK_BEGIN, MARK_END = "<!-- bench:mutation -->", "<!-- /bench:mutation -->"
DOC = ROOT / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class Target:
    """One module (or some of its functions) and the unit test files that test it."""

    slug: str
    label: str
    module: str  # path under agent/veloflux
    tests: tuple[str, ...]  # files under tests/unit
    functions: tuple[str, ...] = ()  # "name" or "Class.method"; () for the whole module
    strict: bool = False  # every survivor must be killed or explained as equivalent

    @property
    def dotted(self) -> str:
        return "veloflux." + self.module.removesuffix(".py").replace("/", ".")

    def globs(self) -> list[str]:
        """mutmut's names for this target's mutants, as shell patterns."""
        if not self.functions:
            return [f"{self.dotted}.*"]
        names = []
        for function in self.functions:
            cls, _, name = function.rpartition(".")
            mangled = f"x\N{LATIN LETTER LATERAL CLICK}{cls}\N{LATIN LETTER LATERAL CLICK}{name}"
            names.append(f"{self.dotted}.{mangled if cls else 'x_' + name}__mutmut_*")
        return names


TARGETS = (
    Target(
        "planner",
        "planner: the safety rules",
        "decide/planner.py",
        ("test_plan.py", "test_advisor_plan_model.py", "test_controls_audit.py", "test_tick.py"),
        strict=True,
    ),
    Target(
        "haproxy-sink",
        "HAProxy sink: the write path",
        "haproxy/sink.py",
        ("test_haproxy_sink.py",),
        strict=True,
    ),
    Target(
        "envoy-sink",
        "Envoy sink: the write path",
        "envoy/sink.py",
        ("test_envoy_sink.py", "test_eds.py"),
        strict=True,
    ),
    Target(
        "registry",
        "model registry",
        "model/registry.py",
        ("test_registry.py", "test_training_gate.py"),
    ),
    Target(
        "gate",
        "promotion gate",
        "model/pipeline.py",
        ("test_training_gate.py",),
        functions=("gate", "_current_on"),
    ),
    Target(
        "api-server",
        "API: authentication and request checks",
        "daemon/api/server.py",
        ("test_api.py",),
        # The gate every request passes: routing, the bearer token, the body's checks,
        # refusals. The endpoints behind it and the HTTP plumbing are not safety rules.
        functions=(
            "_Api.handle",
            "_Api._answer",
            "_Api.refuse",
            "_Api._endpoint",
            "_Api._authorize",
            "_Api._json_object",
            "_Api._content_length",
        ),
    ),
    Target("api-fields", "API: token and fields", "daemon/api/fields.py", ("test_api.py",)),
    Target("config-schema", "config: schema", "config/schema.py", ("test_config.py",)),
    Target("config-fields", "config: field types", "config/fields.py", ("test_config.py",)),
    Target("config-load", "config: loading", "config/load.py", ("test_config.py",)),
    Target(
        "outliers",
        "outlier guard: moving averages",
        "decide/outliers.py",
        ("test_advisor_plan_model.py",),
    ),
    Target(
        "advisor-outliers",
        "outlier guard: findings from history",
        "decide/outlier_guard.py",
        ("test_advisor_plan_model.py",),
        functions=("outlier_findings", "_overloaded", "_quantile", "_rising", "_outliers_at"),
    ),
)
BY_SLUG = {t.slug: t for t in TARGETS}

# Added to every test run. The hypothesis profile (tests/conftest.py) draws the same
# examples every run and does not shrink a failing one; the two plugins, left on, make
# each run's end collect the garbage of the whole forked heap (0.3 s of a 0.4 s run).
PYTEST_ARGS = [
    "-p",
    "no:cacheprovider",
    "-p",
    "no:unraisableexception",
    "-p",
    "no:threadexception",
    "--hypothesis-profile=mutation",
]

# mutmut's exit codes, grouped as the doc reports them.
KILLED, SURVIVED, TIMEOUT, NO_TESTS, OTHER = "killed", "survived", "timeout", "no tests", "other"


def verdict(exit_code: int | None) -> str:
    if exit_code in (1, 3):
        return KILLED
    if exit_code == 0:
        return SURVIVED
    if exit_code in (-24, 24, 36, 152, 255):
        return TIMEOUT
    if exit_code in (5, 33):
        return NO_TESTS
    return OTHER


# --- staging and running ------------------------------------------------------------------


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout


def stage(target: Target) -> Path:
    """A fresh copy of the repository (tracked and new files, as they are in the work
    tree) with the package also at ``src/veloflux``, and mutmut's settings."""
    root = BUILD / target.slug
    shutil.rmtree(root, ignore_errors=True)
    files = [f for f in _git("ls-files", "-co", "--exclude-standard", "-z").split("\0") if f]
    for name in files:
        source = ROOT / name
        if not source.is_file():
            continue  # deleted in the work tree, not yet in the index
        places = [root / name]
        if name.startswith("agent/veloflux/"):
            places.append(root / "src" / name.removeprefix("agent/"))
        elif name.startswith("templates/"):
            places.append(root / "src" / "veloflux" / name)
        for place in places:
            place.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, place)
    tops = sorted({name.split("/", 1)[0] for name in files} - {"tests", "pyproject.toml"})
    settings = {
        "source_paths": ["src/veloflux"],
        "only_mutate": [f"src/veloflux/{target.module}"],
        "also_copy": [top for top in tops if (root / top).exists()],
        "pytest_add_cli_args_test_selection": [f"tests/unit/{t}" for t in target.tests],
        "pytest_add_cli_args": PYTEST_ARGS,
        "process_isolation": "forkserver",
    }
    lines = ["", "[tool.mutmut]", *(f"{k} = {json.dumps(v)}" for k, v in settings.items())]
    with (root / "pyproject.toml").open("a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return root


def run_target(target: Target, jobs: int) -> dict[str, Any]:
    """Stage, run mutmut over the target's mutants, and keep the outcome beside them."""
    # What is measured is the work tree as staged: its commit, and whether code outside
    # docs/ differs from it (as in bench.common.provenance).
    commit = _git("rev-parse", "--short=10", "HEAD").strip()
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!docs"))
    root = stage(target)
    mutmut = Path(sys.executable).with_name("mutmut")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    print(f"{target.label}: mutmut running in {root.relative_to(ROOT)} ...", flush=True)
    started = time.perf_counter()
    with (root / "mutmut.log").open("w", encoding="utf-8") as log:
        done = subprocess.run(
            [str(mutmut), "run", "--max-children", str(jobs), *target.globs()],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"mutmut failed for {target.slug} (exit {done.returncode}): {log.name}")
    meta = root / "mutants" / "src" / "veloflux" / f"{target.module}.meta"
    codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    mine = {
        k: v for k, v in codes.items() if any(fnmatch.fnmatchcase(k, g) for g in target.globs())
    }
    survivors = sorted(
        (k for k, v in mine.items() if verdict(v) in (SURVIVED, NO_TESTS)), key=_natural
    )
    outcome = {
        "target": target.slug,
        "seconds": round(seconds, 1),
        "commit": commit,
        "dirty": dirty,
        "exit_codes": mine,
        "diffs": _diffs(root, target, survivors),
    }
    (root / "outcome.json").write_text(json.dumps(outcome, indent=1), encoding="utf-8")
    return outcome


def _natural(name: str) -> tuple[str, int]:
    stem, _, number = name.rpartition("__mutmut_")
    return stem, int(number) if number.isdigit() else 0


def _diffs(root: Path, target: Target, names: list[str]) -> dict[str, str]:
    """Each surviving mutant's diff, as ``mutmut show`` prints it."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    here = Path.cwd()
    os.chdir(root)
    try:
        path = Path("src") / "veloflux" / target.module
        return {name: get_diff_for_mutant(name, path=path) for name in names}
    finally:
        os.chdir(here)


def load_outcome(target: Target) -> dict[str, Any] | None:
    path = BUILD / target.slug / "outcome.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


# --- explanations ----------------------------------------------------------------------------


def change(diff: str) -> str:
    """A mutant's diff in one line: its first removed and first added line, stripped."""
    removed = added = ""
    for line in diff.splitlines():
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("-") and not removed:
            removed = " ".join(line[1:].split())
        elif line.startswith("+") and not added:
            added = " ".join(line[1:].split())
    return f"{removed} -> {added}"


ROW = re.compile(r"^\| `(veloflux\.[^`]+__mutmut_\d+)` \| `(.*?)` \| (.+) \|\s*$")


def explanations(doc: Path = EXPLAINED) -> dict[str, tuple[str, str]]:
    """docs/mutation.md's table rows: mutant name -> (its change, why it is equivalent)."""
    found: dict[str, tuple[str, str]] = {}
    if not doc.exists():
        return found
    for line in doc.read_text(encoding="utf-8").splitlines():
        if match := ROW.match(line):
            name, mutated, why = match.groups()
            found[name] = (" ".join(mutated.replace("\\|", "|").split()), why.strip())
    return found


def summarise(
    target: Target, outcome: dict[str, Any], known: dict[str, tuple[str, str]]
) -> dict[str, Any]:
    counts = Counter(verdict(code) for code in outcome["exit_codes"].values())
    unexplained = []
    for name, diff in outcome["diffs"].items():
        if name not in known or known[name][0] != change(diff):
            unexplained.append(name)
    return {
        "label": target.label,
        "strict": target.strict,
        "mutants": sum(counts.values()),
        "killed": counts[KILLED],
        "timeout": counts[TIMEOUT],
        "survived": counts[SURVIVED],
        "no_tests": counts[NO_TESTS],
        "other": counts[OTHER],
        "equivalent": counts[SURVIVED] + counts[NO_TESTS] - len(unexplained),
        "unexplained": unexplained,
        "seconds": outcome["seconds"],
        "commit": outcome["commit"],
        "dirty": bool(outcome.get("dirty")),
    }


# --- the report ----------------------------------------------------------------------------


def print_report(
    rows: list[dict[str, Any]], outcomes: dict[str, dict[str, Any]], verbose: bool
) -> None:
    header = (
        "target",
        "mutants",
        "killed",
        "timeout",
        "survived",
        "equivalent",
        "unexplained",
        "no tests",
        "s",
    )
    print(" | ".join(header))
    for r in rows:
        print(
            " | ".join(
                str(v)
                for v in (
                    r["label"],
                    r["mutants"],
                    r["killed"],
                    r["timeout"],
                    r["survived"],
                    r["equivalent"],
                    len(r["unexplained"]),
                    r["no_tests"],
                    r["seconds"],
                )
            )
        )
    for r in rows:
        slug = next(t.slug for t in TARGETS if t.label == r["label"])
        if not r["unexplained"]:
            continue
        print(f"\n{r['label']}: {len(r['unexplained'])} surviving mutants not explained")
        for name in r["unexplained"]:
            diff = outcomes[slug]["diffs"][name]
            if verbose:
                print(f"# {name}\n{diff}\n")
            else:  # a docs/mutation.md row, to fill in if the mutant is equivalent
                print(f"| `{name}` | `{change(diff).replace('|', chr(92) + '|')}` | ... |")


def render_section(rows: list[dict[str, Any]], seconds: float, jobs: int) -> str:
    def cells(r: dict[str, Any]) -> tuple[str, ...]:
        label = f"**{r['label']}**" if r["strict"] else r["label"]
        score = r["killed"] + r["timeout"]
        return (
            label,
            str(r["mutants"]),
            str(r["killed"]),
            str(r["timeout"]),
            str(r["survived"]),
            str(r["equivalent"]),
            str(len(r["unexplained"])),
            str(r["no_tests"]),
            f"{score / r['mutants']:.0%}" if r["mutants"] else "-",
            f"{r['seconds'] / 60:.1f}",
        )

    total = {
        k: sum(r[k] for r in rows)
        for k in ("mutants", "killed", "timeout", "survived", "equivalent", "no_tests")
    }
    total_row = (
        "all",
        *(str(total[k]) for k in ("mutants", "killed", "timeout", "survived", "equivalent")),
        str(sum(len(r["unexplained"]) for r in rows)),
        str(total["no_tests"]),
        f"{(total['killed'] + total['timeout']) / max(1, total['mutants']):.0%}",
        f"{seconds / 60:.1f}",
    )
    strict_left = sum(len(r["unexplained"]) for r in rows if r["strict"])
    commits = ", ".join(
        f"`{commit}`" + (" with uncommitted changes" if dirty else "")
        for commit, dirty in sorted({(r["commit"], r["dirty"]) for r in rows})
    )
    header = (
        "target",
        "mutants",
        "killed",
        "timeout",
        "survived",
        "of which equivalent",
        "unexplained",
        "no tests",
        "detected",
        "minutes",
    )
    return "\n".join(
        [
            HEADING,
            "",
            "What `bench/mutation.py` does: see its docstring. Each target runs only the unit "
            "test files named in its `TARGETS` entry. *Detected*: killed or timed out. "
            "*Equivalent*: a survivor that changes no observable behaviour, each explained in "
            "[mutation.md](mutation.md)'s table; *unexplained*: any other survivor. Targets in "
            "bold are the strict ones, the planner's safety rules and the sinks' write path: "
            "none of their survivors may be unexplained. mutation.md lists the other targets' "
            "survivors by group, equivalent or untested, each with its reason.",
            "",
            MARK_BEGIN,
            f"Measured on {cpu_model()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, mutmut {_mutmut_version()}, {jobs} workers; "
            f"campaign run on commit {commits}. "
            f"Command: `make mutation` (runs `python bench/mutation.py --write`); the whole "
            f"campaign took {seconds / 60:.1f} min.",
            "",
            *table(header, [*(cells(r) for r in rows), total_row]),
            "",
            f"Surviving mutants in the strict targets not explained as equivalent: "
            f"**{strict_left}**.",
            MARK_END,
        ]
    )


def _mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--write", action="store_true", help="write docs/benchmarks.md section")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="mutmut workers")
    parser.add_argument("--only", nargs="+", choices=sorted(BY_SLUG), help="run these targets")
    parser.add_argument("--report", action="store_true", help="summarise the last run only")
    parser.add_argument("--survivors", action="store_true", help="print unexplained diffs")
    opts = parser.parse_args()
    if opts.write and opts.only:
        parser.error("--write needs the whole campaign (or --report on a finished one)")
    outcomes: dict[str, dict[str, Any]] = {}
    for target in TARGETS:
        if not opts.report and (not opts.only or target.slug in opts.only):
            outcomes[target.slug] = run_target(target, opts.jobs)
        elif (outcome := load_outcome(target)) is not None:
            outcomes[target.slug] = outcome
    known = explanations()
    rows = [summarise(t, outcomes[t.slug], known) for t in TARGETS if t.slug in outcomes]
    print_report(rows, outcomes, opts.survivors)
    seconds = sum(o["seconds"] for o in outcomes.values())
    print(f"\ncampaign: {seconds / 60:.1f} min in all")
    if opts.write:
        missing = [t.slug for t in TARGETS if t.slug not in outcomes]
        if missing:
            raise SystemExit(f"no results for {', '.join(missing)}: run the whole campaign")
        replace_section(
            render_section(rows, seconds, opts.jobs), HEADING, MARK_BEGIN, MARK_END, DOC
        )
    strict_left = [n for r in rows if r["strict"] for n in r["unexplained"]]
    if strict_left:
        raise SystemExit(f"{len(strict_left)} unexplained survivors in the strict targets")


if __name__ == "__main__":
    main()
