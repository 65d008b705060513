"""Changeover requests ahead of time: what the plan needs an operator to load, and when.

The dispatcher tells the `Announcer`, every round, which device's next
planned step needs a setup that is not loaded and is due for notice (the
changeover starts within `[scheduler] notice_s`; with an operator calendar the
plan puts a manual one inside a shift, so it is asked for that much before).
The announcer turns the difference from the last round into operator
requests of kind `changeover`: a new one, an updated one (another step or
setup), and a withdrawn one (`details.withdrawn`, with why) when a re-plan
moved it or the setup was loaded. An announced step stays first on its device
in later re-plans unless a plan that moves it has less tardiness or less
changeover time (`planned._plan_snapshot`): a request does not flap between
devices on a tie.

Nothing is stored: after a restart the first plan announces again what is
still needed (the stored setup is the one confirmed with `answer … setup`
or `setup`), so a request survives a crash and none is duplicated on the
device's setup.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from cellctl.jobs.dispatch import SPOOL_KEY, Candidate, unmet
from cellctl.model import OperatorRequest, RequestKind


@dataclass(frozen=True)
class Needed:
    device: str
    step: Candidate
    loaded: Mapping[str, str]
    planned_start: float  # epoch seconds
    changeover_start: float
    device_free_at: float | None  # None: unknown (no estimate of the running step)
    spool_g: float | None = None  # a fresh spool of at least this many grams is needed

    def due_for_notice(self, now: float, notice_s: float) -> bool:
        # The plan's changeover start: on a free device without a calendar that is the
        # plan's own time 0 (now); with one, the next operator window that holds it.
        return self.changeover_start - now <= notice_s

    @property
    def load(self) -> dict[str, str]:
        out = {k: v for k, v in self.step.setup.items() if unmet(self.loaded, {k: v})}
        if self.spool_g is not None:
            out[SPOOL_KEY] = f">={self.spool_g:g}"
        return out

    @property
    def unload(self) -> dict[str, str]:
        return {k: self.loaded[k] for k in self.load if k in self.loaded}

    @property
    def ident(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return (self.step.key, tuple(sorted(self.load.items())))


# A request is published again (`details.updated`) when a re-plan moves its changeover
# by more than this; smaller drifts (estimates ticking) are not news for an operator.
MOVED_S = 120.0


class Announcer:
    def __init__(self) -> None:
        self._shown: dict[str, Needed] = {}
        self._out: list[OperatorRequest] = []
        self.requested = 0  # changeovers asked for (a changed request counts again)
        self.withdrawn = 0

    def update(
        self, needed: Mapping[str, Needed], now: float, met: Collection[tuple[str, str]] = ()
    ) -> None:
        """`met`: (device, step) whose setup is now loaded on the device the plan gives it."""
        for dev, old in list(self._shown.items()):
            new = needed.get(dev)
            if new is not None and new.ident == old.ident:
                self._shown[dev] = new
                if abs(new.changeover_start - old.changeover_start) > MOVED_S:
                    self._out.append(self._request(new, now, updated=True))
                else:
                    self._shown[dev] = old  # the times it was announced with
                continue
            del self._shown[dev]
            if new is not None:
                why = f"replaced by {new.step.key}"
            elif (dev, old.step.key) in met:
                why = "setup loaded"
            else:
                why = "the plan changed"
            self.withdrawn += 1
            self._out.append(self._withdraw(old, why, now))
        for dev, new in needed.items():
            if dev not in self._shown:
                self._shown[dev] = new
                self.requested += 1
                self._out.append(self._request(new, now))

    def asked(self, device: str, need: Needed) -> bool:
        """This need is the one already requested on the device."""
        shown = self._shown.get(device)
        return shown is not None and shown.ident == need.ident

    def take(self) -> list[OperatorRequest]:
        out, self._out = self._out, []
        return out

    def pins(self) -> dict[str, tuple[str, ...]]:
        return {d: (n.step.key,) for d, n in self._shown.items()}

    def shown(self) -> dict[str, Needed]:
        return dict(self._shown)

    def reasons(self) -> dict[str, str]:
        return {
            n.step.key: f"waiting for a changeover on {d}: {_pairs(n.unload)} → {_pairs(n.load)}"
            for d, n in self._shown.items()
        }

    @staticmethod
    def _request(n: Needed, now: float, updated: bool = False) -> OperatorRequest:
        return OperatorRequest(
            device_id=n.device,
            kind=RequestKind.CHANGEOVER,
            text=(
                f"changeover on {n.device} for {n.step.key}: unload {_pairs(n.unload) or 'nothing'}"
                f", load {_pairs(n.load)}; answer with the setup loaded"
                f" (cellctl changeover {n.device} "
                + " ".join(f"{k}={'<grams>' if k == SPOOL_KEY else v}" for k, v in n.load.items())
                + ")"
            ),
            step_key=n.step.key,
            details={
                "job_id": n.step.job_id,
                "index": n.step.index,
                "unload": n.unload,
                "load": n.load,
                "planned_start": n.planned_start,
                "changeover_start": n.changeover_start,
                "device_free_at": n.device_free_at,
                "withdrawn": False,
                "updated": updated,  # the same request again, its times moved
            },
            timestamp=now,
        )

    @staticmethod
    def _withdraw(n: Needed, why: str, now: float) -> OperatorRequest:
        return OperatorRequest(
            device_id=n.device,
            kind=RequestKind.CHANGEOVER,
            text=f"changeover on {n.device} for {n.step.key} withdrawn: {why}",
            step_key=n.step.key,
            details={
                "job_id": n.step.job_id,
                "index": n.step.index,
                "load": n.load,
                "withdrawn": True,
                "why": why,
            },
            timestamp=now,
        )


def _pairs(setup: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in setup.items())
