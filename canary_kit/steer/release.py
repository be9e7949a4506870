"""The next release on a running stack, with no restart of nginx and no failed request.

    canary deploy v1.2.0     # green: the new version, started next to the running ones, at 0% until ready
    canary rollout           # (or set-weight / promote) green takes the traffic step by step
    canary finalize          # blue: the promoted version; green is free for the next deploy

Blue is always the stable version at blue's address, and green the candidate at one of green's two local slots
(or the `ml-green` container): the colors keep their meaning in every log, metric and dashboard, and when the
routing state cannot be read nginx falls back to blue's address, which is still the stable version. So
`finalize` restarts blue with the promoted version while green, serving that same version, answers everything;
the promoted code is not run anywhere it was not already running (Flagger promotes the same way).
"""

from __future__ import annotations

from collections.abc import Callable

from canary_kit.core.errors import CanaryError
from canary_kit.core.routing import RoutingState
from canary_kit.core.target import Target
from canary_kit.steer.control import SplitChanged, change_lock, commit, current

OPERATION_LOCK = ".release.lock"  # one deploy or finalize at a time


def _versions(target: Target, state: RoutingState) -> dict:
    """The versions the state names, asked from the running stack where it names none (a new compose stack)."""
    return {
        "blue_version": state.blue_version or target.serving("blue"),
        "green_version": state.green_version if state.blue_version else target.serving("green"),
    }


def deploy(
    target: Target, version: str, reason: str, echo: Callable[[str], None], timeout: float | None = None
) -> RoutingState:
    """Make `version` the candidate: green at 0%, the version started next to the running ones, then switched
    in as green once it answers, and the old green stopped. Refused, with blue at 100% and the old green kept,
    if the version is not there or does not become ready."""
    problem = target.missing(version)
    if problem:
        raise CanaryError(problem)
    with change_lock(target.state_dir, OPERATION_LOCK):
        with change_lock(target.state_file.parent):
            before = current(target)
            if before.green_weight == 100 and before.green_version:
                raise CanaryError(
                    f"green ({before.green_version}) has 100% after a promote: `canary finalize` first (or `canary "
                    "rollback`), or this deploy would send everyone back to blue"
                )
            if before.green_weight or before.shadow:
                echo(f"green {before.green_weight}% -> 0% until {version} is ready")
                before = commit(
                    target,
                    before,
                    "deploy",
                    f"deploy {version}: green to 0% until it is ready",
                    green_weight=0,
                    shadow=False,
                    **_versions(target, before),
                )
        echo(f"starting {version} next to blue {before.blue_version or target.serving('blue')} ...")
        try:
            slot = target.start_green(version, timeout)
        except CanaryError as exc:
            green = f"green still serves {before.green_version} at 0%" if before.green_version else "green is free"
            raise CanaryError(f"{version} was not deployed: {exc}; blue serves 100%, {green}") from None
        switched = False
        try:
            with change_lock(target.state_file.parent):
                now = current(target)
                if now.serial != before.serial:
                    raise SplitChanged(
                        f"the state was changed during the deploy (green now {now.green_weight}%); "
                        f"{version} was not switched in"
                    )
                state = commit(
                    target,
                    now,
                    "deploy",
                    reason or f"deploy {version}",
                    green_slot=slot,
                    blue_version=_versions(target, now)["blue_version"],
                    green_version=version,
                )
                switched = True
        finally:
            if not switched:
                target.undo_green(slot, before.green_version)
        if slot != before.green_slot:
            target.discard(before.green_slot)
    return state


def finalize(target: Target, reason: str, echo: Callable[[str], None]) -> RoutingState:
    """After `promote`: blue restarts with the promoted version while green answers everything, then blue takes
    all the traffic (green 0%) and green's slot is freed for the next deploy."""
    with change_lock(target.state_dir, OPERATION_LOCK), change_lock(target.state_file.parent):
        before = current(target)
        versions = _versions(target, before)
        promoted, stable = versions["green_version"], versions["blue_version"]
        if promoted is None:
            raise CanaryError("nothing to finalize: green serves no version (`canary deploy VERSION` first)")
        if before.split != (100, False):
            raise CanaryError(f"nothing to finalize: green has {before.green_weight}% (`canary promote` first)")
        answering = target.serving("green")
        if answering != promoted:
            raise CanaryError(
                f"green does not answer as {promoted} ({answering or 'no answer'}): blue keeps {stable}; "
                "`canary rollback` sends everything to blue"
            )
        if promoted != stable:
            echo(f"restarting blue with {promoted} (was {stable}) while green answers every request ...")
            target.restart_blue(promoted, stable)
        state = commit(
            target,
            before,
            "finalize",
            reason or f"finalize {promoted}",
            green_weight=0,
            blue_version=promoted,
            green_version=None,
        )
        target.discard(before.green_slot)
    return state
