"""Versioned models on disk: keep candidates, promote the better one, roll back, refuse tampering.

The registry stores bytes and JSON and knows nothing about XGBoost: the caller turns
boosters into UBJSON bytes (``booster.save_raw("ubj")``) and back. That keeps it fast,
testable without training, and free of pickle, which would run code from the disk.

On-disk layout (a public contract; operators and other tools may rely on it)::

    <model_dir>/
      current                    one line: the version id of the current model
      versions/<version>/
        meta.json                metadata, written last
        <name>.ubj               one file per booster, e.g. latency.ubj, errors.ubj

``<version>`` is ``YYYYMMDDTHHMMSSZ-<hash8>``: the UTC creation time from the injected
clock, so ids sort by time, then the first 8 hex digits of the sha256 of the booster files'
``sha256sum`` manifest in name order (``"<sha256>  <name>.ubj\\n"`` per file). Unlike a
digest of the concatenated bytes, it cannot collide by moving bytes across a file boundary,
and ``sha256sum`` alone recomputes it.

meta.json holds the caller's mapping plus ``version``, ``created_at`` (ISO 8601),
``files`` (``{name: {"sha256": hex, "bytes": int}}``), ``status`` (``candidate``, then
``current`` once promoted, ``retired`` once replaced), ``reason`` (why it was promoted or
rejected) and ``format`` (1).

Concurrency: one writer (the trainer) and any number of readers (the agent), threads or
processes. A version directory is filled under a temporary name and renamed into place,
``current`` and meta.json are replaced with ``os.replace``, and every file is fsynced first,
so a reader sees the old model or the new one, never a half-written one. The ``current``
file is the single source of truth; statuses in meta.json are a record for humans, and a
crash between the two writes is reconciled on read by ``entries``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

from veloflux.errors import ModelUnavailable
from veloflux.util.events import Events
from veloflux.util.files import fsync_dir, replace_atomically, sweep_temps, write_synced

FORMAT = 1
CANDIDATE, CURRENT, RETIRED, BROKEN = "candidate", "current", "retired", "broken"
RESERVED_KEYS = frozenset({"version", "created_at", "files", "status", "reason", "format"})
_META = "meta.json"
_BOOSTER_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_VERSION = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")
_TIME_FORMAT = "%Y%m%dT%H%M%SZ"
# A temporary directory this old belongs to a save that crashed: nothing writes that long.
_STALE_TEMP_SECONDS = 3600.0


@dataclass(frozen=True)
class ModelEntry:
    """One stored version as ``entries`` lists it; ``metadata`` is the whole meta.json."""

    version: str
    created_at: datetime
    status: str
    metadata: Mapping[str, Any]
    reason: str = ""


@dataclass(frozen=True)
class LoadedModel:
    """A version whose every file matched its recorded size and checksum."""

    version: str
    metadata: Mapping[str, Any]
    boosters: Mapping[str, bytes]


class _Untrusted(Exception):
    """Why a version cannot be trusted; ``kind`` labels the refusal event."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Registry:
    """Versioned boosters under one directory; see the module docstring for the layout."""

    def __init__(
        self, root: Path, clock: Callable[[], datetime], events: Events, keep: int = 5
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep}")
        self._root = Path(root)
        self._versions = self._root / "versions"
        self._clock = clock
        self._events = events
        self._keep = keep

    # --- writing (one trainer at a time) ------------------------------------------------

    def save(
        self, boosters: Mapping[str, bytes | bytearray], metadata: Mapping[str, Any]
    ) -> ModelEntry:
        """Store a new candidate; readers cannot see it until it is complete."""
        blobs = _checked_boosters(boosters)
        if clash := RESERVED_KEYS & set(metadata):
            raise ValueError(f"metadata keys {sorted(clash)} are reserved for the registry")
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the registry's clock must return timezone-aware datetimes")
        now = now.astimezone(UTC)
        files = {n: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)} for n, b in blobs}
        version = f"{now.strftime(_TIME_FORMAT)}-{_manifest_digest(files)[:8]}"
        meta = {**metadata, "version": version, "created_at": now.isoformat(), "files": files}
        meta.update(status=CANDIDATE, format=FORMAT)
        meta_bytes = _dump(meta)  # before touching the disk: bad metadata leaves nothing behind
        final = self._versions / version
        temp = self._versions / f".tmp-{version}-{secrets.token_hex(4)}"
        try:
            self._versions.mkdir(parents=True, exist_ok=True)
            temp.mkdir()
            for name, blob in blobs:
                write_synced(temp / f"{name}.ubj", blob)
            write_synced(temp / _META, meta_bytes)  # last: a meta.json means a whole version
            fsync_dir(temp)
            os.rename(temp, final)  # fails, rather than replaces, if the version exists
            fsync_dir(self._versions)
        except OSError as exc:
            shutil.rmtree(temp, ignore_errors=True)
            raise ModelUnavailable(f"cannot save {version} in {self._versions}: {exc}") from exc
        return self._entry(version, self._current_or_none())

    def promote(self, version: str, reason: str = "") -> ModelEntry:
        """Make ``version`` current (rolling back is promoting an older one); verify it first."""
        self._verified_or_refused(version)
        old = self._current_or_none()
        if old is not None and old != version:  # what `model rollback` goes back to
            self._replace(self._root / "previous", f"{old}\n".encode())
        self._replace(self._root / "current", f"{version}\n".encode())
        if old is not None and old != version:
            with contextlib.suppress(ModelUnavailable):  # a broken old record must not block
                self._set_status(old, RETIRED, None)
        self._set_status(version, CURRENT, reason)
        self.prune()
        return self._entry(version, version)

    def reject(self, version: str, reason: str) -> ModelEntry:
        """Record why the gate refused a candidate, so that operators can see it later."""
        if not reason.strip():
            raise ValueError("a rejection needs a reason")
        entry = self._entry(version, self._current_or_none())
        if entry.status not in (CANDIDATE, BROKEN):
            raise ValueError(f"model {version} is {entry.status}; only a candidate can be rejected")
        self._set_status(version, CANDIDATE, reason)  # refuses a broken or unknown version
        return self._entry(version, self._current_or_none())

    def prune(self) -> list[str]:
        """Delete versions beyond the newest ``keep``, never the current one; returns their ids.

        Also sweeps temp directories and files over an hour old: a crashed save left the
        directories, a promotion killed mid-replacement the files."""
        current = self._current_or_none()
        doomed = [e.version for e in self.entries()[self._keep :] if e.version != current]
        for version in doomed:
            # Rename first, so that no reader ever sees a version with half its files gone.
            trash = self._versions / f".deleting-{version}-{secrets.token_hex(4)}"
            try:
                os.rename(self._versions / version, trash)
            except OSError as exc:
                self._events.record("model_prune_failed", f"cannot delete {version}: {exc}")
                continue
            shutil.rmtree(trash, ignore_errors=True)
        with contextlib.suppress(OSError):
            for path in self._versions.glob(".*"):
                if path.is_dir() and time.time() - path.stat().st_mtime > _STALE_TEMP_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)
            for path in self._versions.iterdir():
                if _VERSION.fullmatch(path.name):
                    sweep_temps(path / _META, _STALE_TEMP_SECONDS)
        for pointer in ("current", "previous"):
            sweep_temps(self._root / pointer, _STALE_TEMP_SECONDS)
        return [v for v in doomed if not (self._versions / v).exists()]

    # --- reading (any number of agents) ---------------------------------------------------

    def current_version(self) -> str | None:
        """The text of ``current`` (even if no such version exists), None if there is none."""
        path = self._root / "current"
        try:
            return path.read_text(encoding="utf-8", errors="replace").strip() or None
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ModelUnavailable(f"cannot read {path}: {exc}") from exc

    def previous_version(self) -> str | None:
        """The version that was current before the last promotion (None: none was)."""
        try:
            text = (self._root / "previous").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        return text.strip() or None

    def entries(self) -> list[ModelEntry]:
        """Every stored version, newest first; a broken one is listed as such, never raised."""
        current = self._current_or_none()
        try:
            names = [p.name for p in self._versions.iterdir() if _VERSION.fullmatch(p.name)]
        except OSError:
            return []
        found = [self._entry(name, current) for name in names]
        return sorted(found, key=lambda e: (e.created_at, e.version), reverse=True)

    def load(self, version: str | None = None) -> LoadedModel:
        """The verified bytes of ``version`` (default: current), else ``ModelUnavailable``."""
        if version is not None:
            return self._verified_or_refused(version)
        wanted = self._current_or_refused()
        try:
            return _verify(self._versions, wanted)
        except _Untrusted as first:
            # A promote and prune may have raced this read: retry once on the new current.
            again = self._current_or_refused()
            if again == wanted:
                self._refuse(wanted, first)
            return self._verified_or_refused(again)

    # --- helpers -------------------------------------------------------------------------

    def _current_or_none(self) -> str | None:
        try:
            return self.current_version()
        except ModelUnavailable:
            return None

    def _current_or_refused(self) -> str:
        try:
            version = self.current_version()
        except ModelUnavailable as exc:
            self._refuse(None, _Untrusted("unreadable", str(exc)))
        if version is None:
            advice = f"no model has been promoted yet in {self._root}; run `veloflux-agent train`"
            self._refuse(None, _Untrusted("no_current", advice))
        return version

    def _verified_or_refused(self, version: str) -> LoadedModel:
        try:
            return _verify(self._versions, version)
        except _Untrusted as exc:
            self._refuse(version, exc)

    def _refuse(self, version: str | None, why: _Untrusted) -> NoReturn:
        """Count and log the refusal, then raise: the caller falls back to static weights."""
        self._events.record("model_refused", str(why), version=version or "", reason=why.kind)
        raise ModelUnavailable(str(why))

    def _entry(self, version: str, current: str | None) -> ModelEntry:
        try:
            meta = _read_meta(self._versions, version)
        except _Untrusted as exc:
            return ModelEntry(version, _time_of(version), BROKEN, MappingProxyType({}), str(exc))
        status = meta["status"]
        if version == current:
            status = CURRENT
        elif status == CURRENT:  # a crash came between writing `current` and the statuses
            status = RETIRED
        created = datetime.fromisoformat(meta["created_at"]).astimezone(UTC)
        reason = str(meta.get("reason", ""))
        return ModelEntry(version, created, status, MappingProxyType(meta), reason)

    def _set_status(self, version: str, status: str, reason: str | None) -> None:
        try:
            meta = _read_meta(self._versions, version)
        except _Untrusted as exc:
            self._refuse(version, exc)
        meta["status"] = status
        if reason is not None:
            meta["reason"] = reason
        self._replace(self._versions / version / _META, _dump(meta))

    def _replace(self, path: Path, data: bytes) -> None:
        try:
            replace_atomically(path, data)
        except OSError as exc:
            raise ModelUnavailable(f"cannot write {path}: {exc}") from exc


def _checked_boosters(boosters: Mapping[str, bytes | bytearray]) -> list[tuple[str, bytes]]:
    """Booster names become file names: refuse anything that could leave the directory."""
    if not boosters:
        raise ValueError("a model needs at least one booster")
    for name, blob in boosters.items():
        if not isinstance(name, str) or not _BOOSTER_NAME.fullmatch(name):
            raise ValueError(f"booster name {name!r} must match {_BOOSTER_NAME.pattern}")
        if not isinstance(blob, bytes | bytearray):
            raise TypeError(f"booster {name!r} must be bytes, not {type(blob).__name__}")
    return [(name, bytes(boosters[name])) for name in sorted(boosters)]


def _manifest_digest(files: Mapping[str, Mapping[str, Any]]) -> str:
    manifest = "".join(f"{files[n]['sha256']}  {n}.ubj\n" for n in sorted(files))
    return hashlib.sha256(manifest.encode()).hexdigest()


def _dump(meta: Mapping[str, Any]) -> bytes:
    try:
        return (json.dumps(meta, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model metadata must be plain JSON (no NaN, no objects): {exc}") from exc


def _time_of(version: str) -> datetime:
    """The creation time a version id carries, for listing a version whose meta.json is lost."""
    try:
        return datetime.strptime(version[:16], _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


def _read_meta(versions: Path, version: str) -> dict[str, Any]:
    """meta.json of ``version``, checked for shape; the booster files are not read."""
    path = versions / version / _META
    if not _VERSION.fullmatch(version) or not path.parent.is_dir():  # keeps "../x" out too
        raise _Untrusted("unknown_version", f"model {version!r} does not exist in {versions}")
    try:
        meta = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise _Untrusted("meta_missing", f"model {version}: {path} is missing") from None
    except OSError as exc:
        raise _Untrusted("unreadable", f"model {version}: cannot read {path}: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise _Untrusted("meta_invalid", f"model {version}: {path} is not JSON: {exc}") from exc
    if problem := _meta_problem(meta, version):
        raise _Untrusted("meta_invalid", f"model {version}: {path} {problem}; refusing it")
    return dict(meta)


def _meta_problem(meta: object, version: str) -> str:
    """What is wrong with a parsed meta.json, or "" when it is one this registry wrote."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return f"is not in registry format {FORMAT}"
    if meta.get("version") != version or meta.get("status") not in (CANDIDATE, CURRENT, RETIRED):
        return "does not describe this version with a known status"
    try:
        datetime.fromisoformat(meta["created_at"]).astimezone(UTC)
    except (KeyError, TypeError, ValueError, OverflowError):
        return "has no valid created_at"
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        return "lists no booster files"
    for name, info in files.items():
        if not (
            _BOOSTER_NAME.fullmatch(name)
            and isinstance(info, dict)
            and isinstance(info.get("sha256"), str)
            and type(info.get("bytes")) is int
        ):
            return f"has an invalid entry for booster {name!r}"
    if not version.endswith(_manifest_digest(files)[:8]):
        return "does not match the checksum in its version id"
    return ""


def _verify(versions: Path, version: str) -> LoadedModel:
    """Read every booster and check it against meta.json; raise ``_Untrusted`` if any differ."""
    meta = _read_meta(versions, version)
    boosters: dict[str, bytes] = {}
    for name, info in sorted(meta["files"].items()):
        path = versions / version / f"{name}.ubj"
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise _Untrusted("file_missing", f"model {version}: {path} is missing") from None
        except OSError as exc:
            raise _Untrusted("unreadable", f"model {version}: cannot read {path}: {exc}") from exc
        changed = "the file was changed after VeloFlux wrote it; refusing it"
        if len(blob) != info["bytes"]:
            size = f"{len(blob)} bytes, meta.json says {info['bytes']}"
            raise _Untrusted("size_mismatch", f"size mismatch for {path} ({size}): {changed}")
        if hashlib.sha256(blob).hexdigest() != info["sha256"]:
            raise _Untrusted("checksum_mismatch", f"checksum mismatch for {path}: {changed}")
        boosters[name] = blob
    return LoadedModel(version, MappingProxyType(meta), MappingProxyType(boosters))
