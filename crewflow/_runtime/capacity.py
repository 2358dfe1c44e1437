"""The controller behind ``Limit(concurrency="auto")``: one per limit key, in the registry.

**AIMD with a remembered ceiling.** The limit starts from what earlier runs learned (or
`CONSERVATIVE_START`) and grows by one per healthy reply until the first pushback (slow start: it
doubles every round trip), then by one per window of healthy replies (a window: as many replies as
the limit). Only replies that come back while the key uses its whole limit count: a run's tail,
with fewer calls left than the limit, says nothing of the capacity. Pushback is a 429, a 5xx,
another failure the breaker counts, or replies slower than `LATENCY_FACTOR` times the baseline (the
fastest recent one), on a moving average (weight `LATENCY_WEIGHT` for the newest): one long answer
is not overload, a run of them is; it cuts the limit to `DECREASE` times itself (never below
``Auto.min``), or, for a 429, to the calls still in flight when those are fewer than the limit (the
provider refused one more than it serves), and remembers the level that was refused as the ceiling.
Below the ceiling the limit grows by a window as before; at one below it, it only probes the
ceiling after `PROBE_WINDOWS` windows of healthy replies, twice as many after each probe refused,
so a provider whose capacity is steady sees a 429 rarely (each costs every caller the Retry-After
pause). A start learned from earlier runs is taken as one below the ceiling, probed after
`LEARNED_PROBE_WINDOWS`: no slow start.

One pushback per episode: replies to calls that started before the last cut say nothing of the
new limit, and do not cut it again (a burst of 429s is one cut, not one per reply).

The controller knows nothing of clocks or locks: the registry calls it under its lock with
clock times, so tests drive it with a `FakeClock` or plain numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from crewflow.limits import Auto

__all__ = [
    "CONSERVATIVE_START",
    "DECREASE",
    "LATENCY_FACTOR",
    "LATENCY_WEIGHT",
    "LEARNED_PROBE_WINDOWS",
    "PROBE_WINDOWS",
    "Change",
    "Controller",
    "Reason",
]

CONSERVATIVE_START = 4
"""The limit a key starts at when no earlier run learned one (within ``Auto``'s bounds)."""
DECREASE = 0.7
"""What a pushback multiplies the limit by."""
LATENCY_FACTOR = 2.0
"""Replies slower on average than this many times the baseline (the fastest recent reply) are
pushback."""
LATENCY_WEIGHT = 0.2
"""The weight of the newest reply's latency in the moving average compared to the baseline."""
PROBE_WINDOWS = 16
"""Windows of healthy replies at one below the ceiling before the limit probes it again."""
LEARNED_PROBE_WINDOWS = 8 * PROBE_WINDOWS
"""The same, from a start learned from earlier clean runs: a level they settled at is
trusted longer."""
# The baseline forgets: each reply lets it drift up by this fraction toward slower replies, so a
# provider that got slower for good is not read as overloaded forever.
_BASELINE_DRIFT = 0.005

Reason = Literal["learned", "healthy", "rate_limited", "server_error", "failure", "latency"]


@dataclass(frozen=True, slots=True)
class Change:
    """One change of a key's limit."""

    key: str
    old: int
    new: int
    reason: Reason
    time: float


class Controller:
    """The auto limit of one key (see the module docstring)."""

    __slots__ = (
        "_cut_at",
        "_healthy",
        "_probe",
        "baseline",
        "bounds",
        "ceiling",
        "key",
        "limit",
        "recent",
    )

    def __init__(self, key: str, bounds: Auto, start: int | None = None) -> None:
        self.key = key
        self.bounds = bounds
        self.limit = self._bounded(CONSERVATIVE_START if start is None else start)
        self.ceiling: int | None = None  # the level of the last pushback (None: slow start)
        self.baseline: float | None = None
        self.recent = 0.0  # the moving average of latencies
        self._healthy = 0  # healthy replies since the last change
        self._probe = PROBE_WINDOWS  # windows at one below the ceiling before probing it
        self._cut_at = -math.inf

    def _bounded(self, value: int) -> int:
        return max(self.bounds.min, min(self.bounds.max, value))

    def learned(self, level: int) -> None:
        """Start at ``level``, what earlier runs learned: one below the ceiling."""
        self.limit = self._bounded(level)
        self.ceiling = self.limit + 1
        self._probe = LEARNED_PROBE_WINDOWS

    def rebound(self, bounds: Auto) -> Change | None:
        """Apply newly declared bounds, keeping what was learned within them."""
        self.bounds = bounds
        return self._set(self._bounded(self.limit), "learned", -math.inf)

    def observe(
        self,
        *,
        started: float,
        now: float,
        status_code: int | None,
        ok: bool | None,
        in_flight: int,
        waiting: int = 0,
    ) -> Change | None:
        """Take one finished call into account; returns the change it caused, if any.

        Args:
            started: Clock time the call took its slot.
            now: Clock time it ended.
            status_code: The provider's HTTP status for a failed call (``None``: none, or a
                success).
            ok: ``True`` a success, ``False`` a failure the breaker counts, ``None`` neither
                (a 4xx other than 429, a cancellation: no signal).
            in_flight: The key's other calls in flight now.
            waiting: The calls waiting for the key's limit now.
        """
        reason: Reason | None = None
        if status_code == 429:
            reason = "rate_limited"
        elif status_code is not None and status_code >= 500:
            reason = "server_error"
        elif ok is False:
            reason = "failure"
        elif ok:
            latency = now - started
            baseline = self.baseline
            if baseline is None:
                self.baseline = self.recent = latency
            else:
                self.recent += (latency - self.recent) * LATENCY_WEIGHT
                if latency < baseline:
                    self.baseline = latency
                else:
                    self.baseline = baseline + (latency - baseline) * _BASELINE_DRIFT
                if baseline > 0 and self.recent > LATENCY_FACTOR * baseline:
                    reason = "latency"
            if reason is None:
                # Only a key its limit holds back learns that it could take more: calls wait
                # for it, or it is all in use (the tail of a run, with fewer calls left than
                # the limit, says nothing of the capacity). Calls waiting count, because calls
                # that end together each see the others gone before their slots are refilled.
                busy = in_flight + 1 + waiting >= self.limit
                return self._healthy_reply(now) if busy else None
        if reason is None or started < self._cut_at:
            return None
        limit, ceiling = self.limit, self.ceiling
        if self.baseline is not None:
            self.recent = self.baseline  # the next run of slow replies counts afresh
        if ceiling is not None and limit >= ceiling:
            self._probe *= 2  # a probe refused: probe less often
        if reason == "rate_limited" and in_flight < limit:
            # The provider refused one more than it serves now: that is the capacity.
            new = in_flight
            self.ceiling = in_flight + 1
        else:
            new = math.floor(limit * DECREASE)
            self.ceiling = limit
        return self._set(self._bounded(new), reason, now)

    def _healthy_reply(self, now: float) -> Change | None:
        self._healthy += 1
        ceiling = self.ceiling
        if ceiling is None:
            need = 1
        elif self.limit >= ceiling - 1:
            need = self.limit * self._probe
        else:
            need = self.limit
        if self._healthy < need or self.limit >= self.bounds.max:
            return None
        if ceiling is not None and self.limit >= ceiling:
            self.ceiling = self.limit + 2  # the probe held: the capacity is higher
            self._probe = PROBE_WINDOWS
        return self._set(self.limit + 1, "healthy", now)

    def _set(self, new: int, reason: Reason, now: float) -> Change | None:
        old = self.limit
        self._healthy = 0
        if reason != "healthy" and reason != "learned":
            self._cut_at = now
        if new == old:
            return None
        self.limit = new
        return Change(self.key, old, new, reason, now)
