"""No test asserts how long something took: tests check behaviour, bench/ measures speed.

A timing assertion passes on a quiet machine and fails on a busy one (CI, a benchmark
running beside the suite), so it tests the machine, not VeloFlux. This guard reads every
test module with ``ast`` and fails, naming file:line, on an ``assert`` whose expression
calls a clock (``time.monotonic``, ``perf_counter``, ``time.time``, ``process_time``...)
or uses a duration: a difference of two clock readings, a name assigned from one in
the same function, or a call of a function of the same module that returns one (alone
or in a tuple). A wait is fine: ``while time.monotonic() < deadline`` and
``if time.monotonic() > deadline: pytest.fail(...)`` poll for a condition and fail only
when it never comes, and a timestamp kept as data (``end = time.time() - 60``) is no
duration.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
CLOCKS = frozenset(
    {
        "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns", "time", "time_ns",
        "process_time", "process_time_ns", "thread_time", "thread_time_ns",
    }
)  # fmt: skip
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


class _Clocks:
    """How this module reaches the clocks: ``import time [as t]``, ``from time import ...``."""

    def __init__(self, tree: ast.Module) -> None:
        self.modules: set[str] = set()
        self.functions: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                self.modules |= {a.asname or a.name for a in node.names if a.name == "time"}
            elif isinstance(node, ast.ImportFrom) and node.module == "time":
                self.functions |= {a.asname or a.name for a in node.names if a.name in CLOCKS}

    def is_reading(self, node: ast.AST) -> bool:
        """``node`` is a call of a clock."""
        if not isinstance(node, ast.Call):
            return False
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            return func.value.id in self.modules and func.attr in CLOCKS
        return isinstance(func, ast.Name) and func.id in self.functions


def _local_nodes(scope: ast.AST) -> Iterator[ast.AST]:
    """Every node of one function (or the module), not those of functions inside it."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, _SCOPES):
            stack.extend(ast.iter_child_nodes(node))


def _assignments(scope: ast.AST) -> list[tuple[list[ast.AST], ast.AST]]:
    """(targets, value) of each plain, annotated, augmented or walrus assignment."""
    found: list[tuple[list[ast.AST], ast.AST]] = []
    for node in _local_nodes(scope):
        if isinstance(node, ast.Assign):
            found.append((list(node.targets), node.value))
        elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.NamedExpr) and node.value:
            found.append(([node.target], node.value))
    return found


Positions = frozenset[int | None]  # which parts of a return are durations; None: all of it


class _Scope:
    """One function's clock readings and durations, found to a fixed point."""

    def __init__(self, scope: ast.AST, clocks: _Clocks, timers: dict[str, Positions]) -> None:
        self.clocks = clocks
        self.timers = timers  # functions of this module that return a duration
        self.readings: set[str] = set()  # names holding a clock reading (or a deadline)
        self.durations: set[str] = set()  # names holding a difference of two readings
        assignments = _assignments(scope)
        changed = True
        while changed:
            changed = False
            for targets, value in assignments:
                names = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
                if names - self.readings and self.reads(value):
                    self.readings |= names
                    changed = True
                timed = self._timed_names(targets, value)
                if timed - self.durations:
                    self.durations |= timed
                    changed = True

    def _timed_names(self, targets: list[ast.AST], value: ast.AST) -> set[str]:
        """The names an assignment binds to a duration: all of them, or (``a, b = f()``
        with ``f`` returning ``x, later - earlier``) those in a duration's position."""
        if self.measures(value):
            return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        positions = self._timer_positions(value)
        return {
            element.id
            for target in targets
            if isinstance(target, ast.Tuple)
            for i, element in enumerate(target.elts)
            if i in positions and isinstance(element, ast.Name)
        }

    def _timer_positions(self, node: ast.AST) -> Positions:
        call = node.value if isinstance(node, ast.Await) else node
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
            return self.timers.get(call.func.id, frozenset())
        return frozenset()

    def reads(self, node: ast.AST) -> bool:
        """``node`` calls a clock or uses a name that holds a reading."""
        return any(
            self.clocks.is_reading(n) or (isinstance(n, ast.Name) and n.id in self.readings)
            for n in ast.walk(node)
        )

    def measures(self, node: ast.AST) -> bool:
        """``node`` takes one reading from another, or uses a duration: a name holding
        one, or a call of a function of this module that returns one."""
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and n.id in self.durations:
                return True
            if (
                isinstance(n, ast.BinOp)
                and isinstance(n.op, ast.Sub)
                and self.reads(n.left)
                and self.reads(n.right)
            ):
                return True
            if None in self._timer_positions(n):
                return True
        return False

    def times(self, node: ast.AST) -> bool:
        """An assertion on this would pass or fail with the machine's speed."""
        clock_call = any(self.clocks.is_reading(n) for n in ast.walk(node))
        return clock_call or self.measures(node)


def _timers(
    functions: list[ast.FunctionDef | ast.AsyncFunctionDef], clocks: _Clocks
) -> dict[str, Positions]:
    """Functions whose return value is (or holds, in a tuple) a duration, by name."""
    timers: dict[str, Positions] = {}
    changed = True
    while changed:  # a timer may return what another timer returned
        changed = False
        for function in functions:
            scope = _Scope(function, clocks, timers)
            positions: set[int | None] = set()
            for node in _local_nodes(function):
                if not isinstance(node, ast.Return) or node.value is None:
                    continue
                if isinstance(node.value, ast.Tuple):
                    elements = enumerate(node.value.elts)
                    positions |= {i for i, e in elements if scope.measures(e)}
                elif scope.measures(node.value):
                    positions.add(None)
            known = timers.get(function.name, frozenset())
            if positions - known:
                timers[function.name] = known | positions
                changed = True
    return timers


def timing_asserts(source: str, filename: str = "<string>") -> list[str]:
    """``file:line: assert ...`` for every assert that reads a clock or a duration."""
    tree = ast.parse(source, filename)
    clocks = _Clocks(tree)
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    timers = _timers(functions, clocks)
    found = []
    for scope in [tree, *functions]:
        judged = _Scope(scope, clocks, timers)
        for node in _local_nodes(scope):
            if isinstance(node, ast.Assert) and judged.times(node.test):
                found.append(f"{filename}:{node.lineno}: assert {ast.unparse(node.test)}")
    return sorted(found, key=lambda line: int(line.split(":")[1]))


MODULES = sorted(p.relative_to(TESTS).as_posix() for p in TESTS.rglob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_no_test_asserts_how_long_something_took(module: str) -> None:
    path = TESTS / module
    found = timing_asserts(path.read_text(encoding="utf-8"), f"tests/{module}")
    assert not found, (
        "tests check behaviour, not speed (bench/ measures it); timing assertions:\n"
        + "\n".join(found)
    )


TIMED = {
    "a reading minus a reading, asserted directly": """
import time
def test_x():
    started = time.monotonic()
    work()
    assert time.monotonic() - started < 2.5  # timed
""",
    "a duration kept in a name": """
import time
def test_x():
    started = time.perf_counter()
    work()
    elapsed = time.perf_counter() - started
    assert result.ok
    assert elapsed < 2.0  # timed
""",
    "a duration scaled, through a second name": """
import time
def test_x():
    t0 = time.process_time()
    work()
    t1 = time.process_time()
    seconds = t1 - t0
    ms = seconds * 1000
    assert ms <= 40  # timed
""",
    "a clock imported by name, aliased": """
from time import perf_counter as clock
async def test_x():
    began = clock()
    await work()
    assert clock() - began < 0.2  # timed
""",
    "a duration returned in a tuple by a helper": """
import time
def bounded(api):
    started = time.monotonic()
    result = api.run()
    return result, time.monotonic() - started
def test_x():
    result, elapsed = bounded(api)
    assert result == []
    assert elapsed < 5  # timed
""",
    "a helper's duration asserted directly": """
import time
async def timed_get(url):
    began = time.perf_counter()
    await get(url)
    return time.perf_counter() - began
async def test_x():
    assert await timed_get("/") < 0.2  # timed
""",
    "the module aliased, wall clock": """
import time as t
def test_x():
    assert t.time() < deadline_of(job)  # timed
""",
}

UNTIMED = {
    "a deadline polling loop": """
import time
def wait(check):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("never")
""",
    "a deadline that fails the test when it passes": """
import time, pytest
def test_x():
    deadline = time.monotonic() + 10
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail("not ready")
    assert ready()
""",
    "a timestamp kept as data": """
import time
def test_x():
    end = time.time() - 60
    rows = query(until=end)
    assert len(rows) == 4
""",
    "durations that are data, not clocks": """
def test_x():
    assert parse_duration("500ms") == 0.5
    assert result.duration_s == 3
""",
}


@pytest.mark.parametrize("source", TIMED.values(), ids=TIMED.keys())
def test_the_scanner_flags_a_timing_assertion(source: str) -> None:
    found = timing_asserts(source, "tests/sample.py")
    assert len(found) == 1, found
    (line,) = found
    timed = next(n for n, text in enumerate(source.splitlines(), 1) if text.endswith("# timed"))
    assert line.startswith(f"tests/sample.py:{timed}: assert ")


@pytest.mark.parametrize("source", UNTIMED.values(), ids=UNTIMED.keys())
def test_the_scanner_leaves_waits_and_timestamps_alone(source: str) -> None:
    assert timing_asserts(source, "tests/sample.py") == []
