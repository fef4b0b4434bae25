"""Before ``apply`` or ``revert`` writes from a shell: is a daemon driving these weights?

A daemon beside the proxy writes its plan every tick, so a weight written from a shell
lasts one interval: ``revert``, the emergency brake, would be undone before anyone
saw it work. So the write commands first ask the daemon's API (``api.listen``, from
the same config). ``revert`` pauses a running daemon (with the token) and writes once
the pause has taken effect; ``apply`` refuses to fight a daemon that is not paused.
When a daemon answers but cannot be paused (no token, a wrong one), both refuse with
exit 2 and say how to go on; ``--force`` writes anyway, with a warning that the
daemon will put its own weights back. Nothing answering at the address means no
daemon: the command writes as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from veloflux.cli.app import EXIT_PROXY, fail
from veloflux.config.schema import Config
from veloflux.daemon.api.client import ApiClient, ApiError, ApiRefused, ApiUnreachable
from veloflux.daemon.api.fields import read_token
from veloflux.daemon.audit import Actor
from veloflux.errors import ConfigError

# Long enough for a pause to wait out a tick in progress (the daemon answers after it).
_PAUSE_TIMEOUT_S = 30.0
_PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class DaemonState:
    """What the guard found at ``api.listen``: nothing, or a daemon and its pause."""

    address: str
    running: bool
    paused: bool = False
    pause_reason: str = ""


def daemon_state(config: Config, actor: Actor) -> tuple[DaemonState, ApiClient | None]:
    """Ask ``api.listen`` whether a daemon runs there, and whether it is paused.

    The client comes back only when the token could be read: without it nothing can
    be asked of the daemon but its status.
    """
    try:
        token = read_token(config.api.token_file)
    except ConfigError:
        token = None
    probe = ApiClient(config.api.host, config.api.port, None, _PROBE_TIMEOUT_S)
    try:
        status = probe.status()
    except ApiError:  # nothing there, or something that is not VeloFlux
        return DaemonState(probe.address, running=False), None
    state = DaemonState(
        probe.address, True, bool(status.get("paused")), str(status.get("pause_reason") or "")
    )
    if token is None:
        return state, None
    return state, ApiClient(
        config.api.host, config.api.port, token, _PAUSE_TIMEOUT_S, actor=actor.name
    )


def pause_for_revert(config: Config, actor: Actor, reason: str, force: bool) -> DaemonState:
    """Pause a running daemon so that the static weights about to be written stay;
    refuse (exit 2) when it cannot be paused, unless ``force``."""
    state, client = daemon_state(config, actor)
    if not state.running:
        return state
    if state.paused:
        note(f"the daemon at {state.address} is already paused ({state.pause_reason})")
        return state
    why = "no readable api.token_file to pause it with"
    if client is not None:
        try:
            client.pause(reason)
        except (ApiRefused, ApiUnreachable) as exc:
            why = str(exc)
        else:
            note(
                f"paused the daemon at {state.address}: it keeps observing and writes "
                "nothing until `veloflux-agent resume`"
            )
            return DaemonState(state.address, True, True, reason)
    return _cannot_hold(state, why, force, "revert")


def refuse_to_fight(config: Config, actor: Actor, force: bool) -> DaemonState:
    """``apply`` beside a daemon that is writing: refuse (exit 2) unless ``force``."""
    state, _ = daemon_state(config, actor)
    if not state.running or state.paused:
        return state
    return _cannot_hold(state, "it is running and not paused", force, "apply")


def _cannot_hold(state: DaemonState, why: str, force: bool, command: str) -> DaemonState:
    undone = "the daemon will put its own weights back at its next tick"
    if force:
        note(f"warning: writing anyway (--force) beside the daemon at {state.address}; {undone}")
        return state
    fail(
        EXIT_PROXY,
        f"a VeloFlux daemon answers at {state.address} and {command} would fight it "
        f"({why}): {undone}. Pause it first (`veloflux-agent pause --reason ...`, which "
        f"needs api.token_file), or stop it, then run {command} again; --force writes anyway.",
    )


def note(message: str) -> None:
    click.echo(message, err=True)
