"""The model registry: versions on disk, promotion, rollback, and refusal of anything tampered."""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import pytest
import xgboost

from veloflux.errors import ModelUnavailable
from veloflux.model import registry as registry_module
from veloflux.model.registry import LoadedModel, Registry
from veloflux.util.events import Events

START = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
BOOSTERS = {"latency": b"\x00latency-model\xff" * 20, "errors": b"errors-model"}
METADATA = {"features": ["rate", "queue", "next_rate"], "rows": 50, "metrics": {"mae": 0.25}}


class StepClock:
    """A clock that moves one minute per reading, so every save gets its own second."""

    def __init__(self, start: datetime = START, step: timedelta = timedelta(minutes=1)) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> datetime:
        reading = self.now
        self.now += self.step
        return reading


MakeRegistry = Callable[..., Registry]
T = TypeVar("T")


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def make_registry(root: Path, events: Events) -> MakeRegistry:
    def make(keep: int = 5, clock: Callable[[], datetime] | None = None) -> Registry:
        return Registry(root, clock or StepClock(), events, keep=keep)

    return make


@pytest.fixture
def registry(make_registry: MakeRegistry) -> Registry:
    return make_registry()


def variant(i: int) -> dict[str, bytes]:
    """A distinct set of boosters per ``i``, so each save has its own checksum."""
    return {name: blob + str(i).encode() for name, blob in BOOSTERS.items()}


def booster_path(root: Path, version: str, name: str = "latency") -> Path:
    return root / "versions" / version / f"{name}.ubj"


# --- round trip and version ids --------------------------------------------------------


def test_save_then_load_returns_the_same_bytes_and_metadata(registry: Registry) -> None:
    entry = registry.save(BOOSTERS, METADATA)
    loaded = registry.load(entry.version)
    assert dict(loaded.boosters) == BOOSTERS
    assert loaded.version == entry.version
    for key, value in METADATA.items():
        assert loaded.metadata[key] == value
    assert loaded.metadata["status"] == "candidate"
    assert loaded.metadata["format"] == 1
    assert loaded.metadata["created_at"] == START.isoformat()
    assert loaded.metadata["files"]["errors"] == {
        "sha256": hashlib.sha256(BOOSTERS["errors"]).hexdigest(),
        "bytes": len(BOOSTERS["errors"]),
    }
    assert entry.status == "candidate"
    assert entry.created_at == START


def test_bytearray_boosters_are_accepted_as_save_raw_returns_them(registry: Registry) -> None:
    entry = registry.save({"latency": bytearray(b"raw")}, {})
    assert registry.load(entry.version).boosters["latency"] == b"raw"


def test_version_id_is_utc_time_then_manifest_checksum(registry: Registry) -> None:
    version = registry.save(BOOSTERS, METADATA).version
    manifest = "".join(
        f"{hashlib.sha256(BOOSTERS[name]).hexdigest()}  {name}.ubj\n" for name in sorted(BOOSTERS)
    )
    assert version == f"20250102T030405Z-{hashlib.sha256(manifest.encode()).hexdigest()[:8]}"


def test_version_ids_sort_by_creation_time(registry: Registry) -> None:
    versions = [registry.save(variant(i), {}).version for i in range(5)]
    assert versions == sorted(versions)
    assert [e.version for e in registry.entries()] == versions[::-1]


def test_a_clock_in_another_zone_still_gives_utc_ids(make_registry: MakeRegistry) -> None:
    plus_two = timezone(timedelta(hours=2))
    registry = make_registry(clock=StepClock(START.astimezone(plus_two)))
    assert registry.save(BOOSTERS, {}).version.startswith("20250102T030405Z-")


# --- promote, reject, entries, prune ----------------------------------------------------


def test_promote_moves_current_and_retires_the_old_one(registry: Registry, root: Path) -> None:
    first = registry.save(variant(1), {}).version
    second = registry.save(variant(2), {}).version
    assert registry.current_version() is None
    registry.promote(first, reason="first model")
    assert registry.current_version() == first
    assert registry.load().version == first

    promoted = registry.promote(second, reason="p95 error 12% lower")
    assert promoted.status == "current"
    assert promoted.reason == "p95 error 12% lower"
    assert registry.current_version() == second
    assert dict(registry.load().boosters) == variant(2)
    statuses = {e.version: e.status for e in registry.entries()}
    assert statuses == {second: "current", first: "retired"}
    assert registry.load(first).metadata["status"] == "retired"
    assert (root / "current").read_text() == f"{second}\n"


def test_rollback_is_promoting_an_older_version(registry: Registry) -> None:
    first = registry.save(variant(1), {}).version
    second = registry.save(variant(2), {}).version
    registry.promote(first)
    registry.promote(second)
    registry.promote(first, reason="rollback: second model misbehaved")
    statuses = {e.version: e.status for e in registry.entries()}
    assert statuses == {first: "current", second: "retired"}
    assert registry.load().version == first


def test_reject_keeps_the_candidate_and_its_reason(registry: Registry) -> None:
    version = registry.save(BOOSTERS, METADATA).version
    entry = registry.reject(version, "validation MAE worse than current (0.31 > 0.25)")
    assert entry.status == "candidate"
    assert entry.reason == "validation MAE worse than current (0.31 > 0.25)"
    (listed,) = registry.entries()
    assert (listed.status, listed.reason) == ("candidate", entry.reason)
    assert registry.load(version).metadata["reason"] == entry.reason
    assert registry.current_version() is None


def test_reject_refuses_the_current_model_and_an_empty_reason(registry: Registry) -> None:
    version = registry.save(BOOSTERS, {}).version
    with pytest.raises(ValueError, match="reason"):
        registry.reject(version, " ")
    registry.promote(version)
    with pytest.raises(ValueError, match="only a candidate"):
        registry.reject(version, "too late")
    with pytest.raises(ModelUnavailable, match="does not exist"):
        registry.reject("20990101T000000Z-deadbeef", "never saved")


def test_entries_newest_first_with_every_status(registry: Registry) -> None:
    a, b, c, d = (registry.save(variant(i), {}).version for i in range(4))
    registry.promote(a)
    registry.promote(b)
    registry.reject(c, "worse")
    entries = registry.entries()
    assert [e.version for e in entries] == [d, c, b, a]
    assert [e.status for e in entries] == ["candidate", "candidate", "current", "retired"]
    assert [e.reason for e in entries] == ["", "worse", "", ""]


def test_entries_of_an_empty_or_missing_directory(registry: Registry) -> None:
    assert registry.entries() == []
    assert registry.prune() == []


def test_prune_keeps_the_newest_and_never_the_current(
    make_registry: MakeRegistry, root: Path
) -> None:
    registry = make_registry(keep=2)
    versions = [registry.save(variant(i), {}).version for i in range(5)]
    registry.promote(versions[0])  # the oldest is current; promote prunes
    remaining = [e.version for e in registry.entries()]
    assert remaining == [versions[4], versions[3], versions[0]]
    assert sorted(os.listdir(root / "versions")) == sorted(remaining)
    assert registry.load().version == versions[0]
    newer = registry.save(variant(9), {}).version
    assert registry.prune() == [versions[3]]
    assert [e.version for e in registry.entries()] == [newer, versions[4], versions[0]]


def test_prune_sweeps_stale_temp_dirs_and_entries_ignore_them(
    registry: Registry, root: Path
) -> None:
    version = registry.save(BOOSTERS, {}).version
    versions_dir = root / "versions"
    stale, fresh = versions_dir / ".tmp-crashed-1", versions_dir / ".tmp-in-progress-2"
    for path in (stale, fresh):
        path.mkdir()
        (path / "latency.ubj").write_bytes(b"half")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert [e.version for e in registry.entries()] == [version]
    assert registry.prune() == []
    assert not stale.exists()
    assert fresh.exists()


# --- refusals ---------------------------------------------------------------------------


def test_no_model_yet_gives_the_advice(registry: Registry, events: Events, root: Path) -> None:
    expected = f"no model has been promoted yet in {root}; run `veloflux-agent train`"
    with pytest.raises(ModelUnavailable) as caught:
        registry.load()
    assert str(caught.value) == expected
    assert events.count("model_refused", reason="no_current") == 1


def test_an_empty_current_file_means_no_model(registry: Registry, root: Path) -> None:
    root.mkdir(parents=True)
    (root / "current").write_text("\n")
    assert registry.current_version() is None
    with pytest.raises(ModelUnavailable, match="no model has been promoted yet"):
        registry.load()


def promoted(registry: Registry) -> str:
    version = registry.save(BOOSTERS, METADATA).version
    registry.promote(version)
    return version


def test_a_flipped_byte_is_a_checksum_mismatch(
    registry: Registry, events: Events, root: Path
) -> None:
    version = promoted(registry)
    path = booster_path(root, version)
    raw = bytearray(path.read_bytes())
    raw[7] ^= 0x01
    path.write_bytes(bytes(raw))
    expected = (
        f"checksum mismatch for {path}: the file was changed after VeloFlux wrote it; refusing it"
    )
    with pytest.raises(ModelUnavailable) as caught:
        registry.load()
    assert str(caught.value) == expected
    with pytest.raises(ModelUnavailable, match="checksum"):
        registry.load(version)
    assert events.count("model_refused", reason="checksum_mismatch", version=version) == 2


def test_a_truncated_file_is_a_size_mismatch(
    registry: Registry, events: Events, root: Path
) -> None:
    version = promoted(registry)
    path = booster_path(root, version, "errors")
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ModelUnavailable, match="size mismatch") as caught:
        registry.load()
    assert str(path) in str(caught.value)
    assert events.count("model_refused", reason="size_mismatch") == 1


def test_a_missing_booster_file_is_refused(registry: Registry, root: Path) -> None:
    version = promoted(registry)
    path = booster_path(root, version, "errors")
    path.unlink()
    with pytest.raises(ModelUnavailable, match="is missing") as caught:
        registry.load()
    assert str(path) in str(caught.value)


def test_a_deleted_meta_json_is_listed_broken_and_refused(registry: Registry, root: Path) -> None:
    version = promoted(registry)
    meta = root / "versions" / version / "meta.json"
    meta.unlink()
    (entry,) = registry.entries()
    assert entry.status == "broken"
    assert str(meta) in entry.reason
    assert entry.created_at == START
    with pytest.raises(ModelUnavailable, match=version) as caught:
        registry.load()
    assert str(meta) in str(caught.value)


@pytest.mark.parametrize(
    "garbage",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"format": 2}',
        b"null",
        b"[" * 100_000,
        b'{"format": 1, "version": "x"}',
    ],
)
def test_garbage_meta_json_is_refused(registry: Registry, garbage: bytes, root: Path) -> None:
    version = promoted(registry)
    meta = root / "versions" / version / "meta.json"
    meta.write_bytes(garbage)
    with pytest.raises(ModelUnavailable, match=r"meta\.json"):
        registry.load()
    assert registry.entries()[0].status == "broken"


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (
            {"version": "20250102T030405Z-00000000"},
            "does not describe this version with a known status",
        ),
        ({"status": "approved"}, "does not describe this version with a known status"),
        ({"created_at": "yesterday"}, "has no valid created_at"),
        ({"files": {}}, "lists no booster files"),
        ({"files": ["latency.ubj"]}, "lists no booster files"),
    ],
)
def test_meta_json_wrong_in_one_field_alone_is_refused_saying_which(
    registry: Registry, events: Events, root: Path, edit: dict[str, object], problem: str
) -> None:
    """Each check of meta.json stands on its own. Kills: the version and status checks,
    or the files' type and emptiness checks, joined with ``and`` instead of ``or``; each
    problem's text altered; the refusal counted under another reason."""
    version = promoted(registry)
    meta_path = root / "versions" / version / "meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), **edit}))
    with pytest.raises(ModelUnavailable) as refused:
        registry.load()
    assert f"model {version}: {meta_path} {problem}; refusing it" in str(refused.value)
    assert events.count("model_refused", reason="meta_invalid", version=version) == 1


def _break(root: Path, version: str, how: str) -> Path:
    """Damage one file of ``version`` the way ``how`` says; return the damaged path."""
    meta = root / "versions" / version / "meta.json"
    booster = booster_path(root, version, "errors")
    path = meta if how.startswith("meta") else booster
    if how.endswith("missing"):
        path.unlink()
    elif how.endswith("directory"):
        path.unlink()
        path.mkdir()
    else:
        path.write_bytes(b"{not json")
    return path


@pytest.mark.parametrize(
    ("how", "reason", "says"),
    [
        ("meta missing", "meta_missing", "{path} is missing"),
        ("meta a directory", "unreadable", "cannot read {path}: "),
        ("meta not JSON", "meta_invalid", "{path} is not JSON: "),
        ("booster missing", "file_missing", "{path} is missing"),
        ("booster a directory", "unreadable", "cannot read {path}: "),
    ],
)
def test_every_refusal_says_what_is_wrong_and_is_counted_under_its_reason(
    registry: Registry, events: Events, root: Path, how: str, reason: str, says: str
) -> None:
    """Monitoring tells a missing file from an unreadable or garbled one by the event's
    ``reason`` label. Kills: each refusal's reason or message altered or dropped."""
    version = promoted(registry)
    path = _break(root, version, how)
    with pytest.raises(ModelUnavailable) as refused:
        registry.load()
    assert f"model {version}: {says.format(path=path)}" in str(refused.value)
    assert events.totals() == {("model_refused", (("reason", reason), ("version", version))): 1}


def test_a_registry_may_keep_a_single_model_but_not_none(make_registry: MakeRegistry) -> None:
    """Kills: ``keep < 1`` made ``keep <= 1`` or ``keep < 2``, its message dropped."""
    assert make_registry(keep=1).entries() == []
    with pytest.raises(ValueError, match=r"^keep must be at least 1, not 0$"):
        make_registry(keep=0)


def test_meta_rewritten_to_match_a_tampered_file_is_refused(registry: Registry, root: Path) -> None:
    """Editing both the file and its recorded checksum no longer matches the version id."""
    version = promoted(registry)
    path = booster_path(root, version)
    path.write_bytes(b"evil")
    meta_path = path.parent / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["files"]["latency"] = {"sha256": hashlib.sha256(b"evil").hexdigest(), "bytes": 4}
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelUnavailable, match="version id"):
        registry.load()


def test_meta_naming_a_file_outside_the_directory_is_refused(
    registry: Registry, root: Path
) -> None:
    version = promoted(registry)
    meta_path = root / "versions" / version / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["files"]["../../escape"] = meta["files"].pop("latency")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelUnavailable, match="invalid entry"):
        registry.load()


def test_current_naming_a_missing_version_is_refused(
    registry: Registry, events: Events, root: Path
) -> None:
    promoted(registry)
    ghost = "20990101T000000Z-deadbeef"
    (root / "current").write_text(ghost + "\n")
    assert registry.current_version() == ghost
    with pytest.raises(ModelUnavailable, match=f"model '{ghost}' does not exist"):
        registry.load()
    assert events.count("model_refused", reason="unknown_version", version=ghost) == 1


@pytest.mark.parametrize("version", ["../../etc", "20250102T030405Z-zzzzzzzz", "", "current"])
def test_malformed_versions_are_unknown_not_paths(registry: Registry, version: str) -> None:
    promoted(registry)
    with pytest.raises(ModelUnavailable, match="does not exist"):
        registry.load(version)
    with pytest.raises(ModelUnavailable, match="does not exist"):
        registry.promote(version)


def test_promote_refuses_a_tampered_candidate_and_keeps_current(
    registry: Registry, root: Path
) -> None:
    good = promoted(registry)
    bad = registry.save(variant(2), {}).version
    booster_path(root, bad).write_bytes(b"x" * len(variant(2)["latency"]))
    with pytest.raises(ModelUnavailable, match="checksum"):
        registry.promote(bad)
    assert registry.current_version() == good
    assert registry.load().version == good


# --- save's input checks -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../latency", "a/b", "a\\b", "latency.v2", ".hidden", "", "Latency", "1st", "x" * 33]
)
def test_unsafe_booster_names_are_refused(registry: Registry, name: str) -> None:
    with pytest.raises(ValueError, match="booster name"):
        registry.save({name: b"x"}, {})
    assert registry.entries() == []


def test_save_refuses_no_boosters_reserved_keys_and_non_json(
    registry: Registry, root: Path
) -> None:
    with pytest.raises(ValueError, match="at least one booster"):
        registry.save({}, {})
    with pytest.raises(ValueError, match="reserved"):
        registry.save(BOOSTERS, {"status": "current"})
    with pytest.raises(ValueError, match="plain JSON"):
        registry.save(BOOSTERS, {"mae": float("nan")})
    with pytest.raises(ValueError, match="plain JSON"):
        registry.save(BOOSTERS, {"when": object()})
    assert not (root / "versions").exists()


def test_save_refuses_a_naive_clock(make_registry: MakeRegistry) -> None:
    registry = make_registry(clock=lambda: datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        registry.save(BOOSTERS, {})


def test_identical_save_in_the_same_second_is_refused(
    make_registry: MakeRegistry, root: Path
) -> None:
    registry = make_registry(clock=lambda: START)
    first = registry.save(BOOSTERS, {"try": 1}).version
    with pytest.raises(ModelUnavailable, match=first):
        registry.save(BOOSTERS, {"try": 2})
    assert registry.load(first).metadata["try"] == 1
    assert [p.name for p in (root / "versions").iterdir()] == [first]


def test_save_into_an_unusable_directory_names_the_path(tmp_path: Path, events: Events) -> None:
    blocker = tmp_path / "models"
    blocker.write_text("a file where the model directory should be")
    registry = Registry(blocker, StepClock(), events)
    with pytest.raises(ModelUnavailable, match=re.escape(str(blocker))):
        registry.save(BOOSTERS, {})
    assert registry.entries() == []
    with pytest.raises(ModelUnavailable):
        registry.load()


# --- concurrency ---------------------------------------------------------------------------
# A reader and a promotion share no lock (they may be two processes), so each interleaving
# that matters is forced: one thread is held at a chosen step inside the registry while
# the other runs, instead of racing two threads and hoping to hit the window.


class Hold:
    """Stops one thread at a chosen point until the test lets it go on."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.go_on = threading.Event()

    def here(self) -> None:
        self.reached.set()
        if not self.go_on.wait(30):
            raise AssertionError("the test never let the held thread go on")

    def wait_reached(self) -> None:
        assert self.reached.wait(30), "the thread never reached the point it is held at"


class InThread(Generic[T]):
    """``fn()`` on its own thread; ``result()`` joins it and returns or re-raises."""

    def __init__(self, fn: Callable[[], T]) -> None:
        self._outcome: list[T] = []
        self._error: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], T]) -> None:
        try:
            self._outcome.append(fn())
        except BaseException as exc:  # re-raised in the test's thread
            self._error.append(exc)

    def result(self) -> T:
        self.thread.join(30)
        assert not self.thread.is_alive(), "the thread did not end"
        if self._error:
            raise self._error[0]
        return self._outcome[0]


def hold_in(
    monkeypatch: pytest.MonkeyPatch, name: str, when: Callable[..., bool], before: bool = False
) -> Hold:
    """Wrap ``veloflux.model.registry.<name>`` so that its first call for which
    ``when(*args)`` is true, on a thread other than the test's, is held after it has
    done its work (``before``: before it starts) until the test lets it go on."""
    original = getattr(registry_module, name)
    hold = Hold()
    main = threading.current_thread()

    def wrapped(*args: Any) -> Any:
        chosen = threading.current_thread() is not main and not hold.reached.is_set()
        chosen = chosen and when(*args)
        if chosen and before:
            hold.here()
        result = original(*args)
        if chosen and not before:
            hold.here()
        return result

    monkeypatch.setattr(registry_module, name, wrapped)
    return hold


def whole(loaded: LoadedModel, expected: dict[str, dict[str, bytes]]) -> str:
    """The version of ``loaded``, once its boosters are exactly that version's."""
    assert dict(loaded.boosters) == expected[loaded.version]
    assert loaded.metadata["version"] == loaded.version
    return loaded.version


@pytest.fixture
def two(registry: Registry) -> tuple[str, str, dict[str, dict[str, bytes]]]:
    """Two saved versions, the older one current."""
    expected = {registry.save(variant(i), {"i": i}).version: variant(i) for i in range(2)}
    first, second = expected
    registry.promote(first)
    return first, second, expected


def test_a_load_that_read_current_before_a_promotion_returns_the_old_model_whole(
    registry: Registry,
    two: tuple[str, str, dict[str, dict[str, bytes]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Forced interleaving: the reader reads ``current`` (the first version) and is held
    before it reads any file of that version; the whole promotion of the second (new
    ``current``, both meta.json rewritten) runs; then the reader goes on. It must return
    the first version whole: a promotion never touches the files a reader is reading."""
    first, second, expected = two
    hold = hold_in(monkeypatch, "_verify", lambda _dir, version: version == first, before=True)
    reader = InThread(registry.load)
    hold.wait_reached()
    registry.promote(second)
    hold.go_on.set()
    loaded = reader.result()
    assert whole(loaded, expected) == first
    assert loaded.metadata["status"] == "retired"  # read after the promotion rewrote it
    assert whole(registry.load(), expected) == second


def test_a_load_holding_old_metadata_through_a_promotion_returns_the_old_model_whole(
    registry: Registry,
    two: tuple[str, str, dict[str, dict[str, bytes]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Forced interleaving: the reader has read the first version's meta.json and is held
    before its booster files; the promotion of the second replaces that meta.json; then
    the reader reads the boosters. They still match the checksums it holds."""
    first, second, expected = two
    hold = hold_in(monkeypatch, "_read_meta", lambda _dir, version: version == first)
    reader = InThread(registry.load)
    hold.wait_reached()
    registry.promote(second)
    hold.go_on.set()
    loaded = reader.result()
    assert whole(loaded, expected) == first
    assert loaded.metadata["status"] == "current"  # read before the promotion


def test_a_load_whose_version_is_pruned_meanwhile_retries_on_the_new_current(
    make_registry: MakeRegistry, events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forced interleaving, with ``keep=1``: the reader reads ``current`` (the first
    version) and is held; promoting the second prunes the first, directory and all;
    the reader goes on, finds its version gone, and loads the new ``current`` whole
    instead of failing or returning half a model. Nothing is refused on the way."""
    registry = make_registry(keep=1)
    expected = {registry.save(variant(i), {"i": i}).version: variant(i) for i in range(2)}
    first, second = expected
    registry.promote(first)
    hold = hold_in(monkeypatch, "_verify", lambda _dir, version: version == first, before=True)
    reader = InThread(registry.load)
    hold.wait_reached()
    registry.promote(second)
    assert [e.version for e in registry.entries()] == [second]  # the first is gone
    hold.go_on.set()
    loaded = reader.result()
    assert whole(loaded, expected) == second
    assert events.count("model_refused") == 0


def test_a_load_between_a_promotions_current_and_its_statuses_gets_the_new_model(
    registry: Registry,
    two: tuple[str, str, dict[str, dict[str, bytes]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Forced interleaving: the promotion of the second version has replaced ``current``
    and is held before it rewrites either meta.json (a crash could stop it there too).
    A load then returns the second version whole, and the listing already calls it
    current and the first one retired; once the promotion ends, both meta.json agree."""
    first, second, expected = two
    hold = hold_in(
        monkeypatch, "replace_atomically", lambda path, _data: Path(path).name == "current"
    )
    promoter = InThread(lambda: registry.promote(second))
    hold.wait_reached()
    assert whole(registry.load(), expected) == second
    statuses = {e.version: e.status for e in registry.entries()}
    assert statuses == {first: "retired", second: "current"}
    assert registry.load(first).metadata["status"] == "current"  # not rewritten yet
    hold.go_on.set()
    promoter.result()
    assert registry.load(first).metadata["status"] == "retired"
    assert registry.load(second).metadata["status"] == "current"


# --- a real XGBoost booster ----------------------------------------------------------------


def test_real_xgboost_booster_round_trips_with_identical_predictions(registry: Registry) -> None:
    rng = np.random.default_rng(7)
    features = rng.random((50, 4))
    target = features @ np.array([1.0, -2.0, 0.5, 3.0]) + rng.normal(0, 0.1, 50)
    train = xgboost.DMatrix(features, label=target)
    booster = xgboost.train({"nthread": 1, "max_depth": 3}, train, num_boost_round=3)
    raw = booster.save_raw("ubj")

    version = registry.save({"latency": raw}, {"xgboost": xgboost.__version__}).version
    registry.promote(version)
    loaded = registry.load()

    restored = xgboost.Booster()
    restored.load_model(bytearray(loaded.boosters["latency"]))
    probe = xgboost.DMatrix(rng.random((20, 4)))
    np.testing.assert_array_equal(booster.predict(probe), restored.predict(probe))
    assert loaded.metadata["xgboost"] == xgboost.__version__
