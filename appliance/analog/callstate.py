"""The hook state machine of an analog line: plain code with no I/O, events in, actions out.

Idle → ringing → in call (⇄ on-hook pending) → idle. Ringing before off-hook makes a call incoming;
off-hook without ringing makes it outgoing (or `unknown` on a line without a ring detector). An
on-hook shorter than the flash window is a hook flash and keeps the call; a longer one ends it at
the instant the hook went down. What happens inside a call (the notice, keys, pauses) is the call
rules' (`appliance.callrules`), the same for analog lines and SIP trunks.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Start:
    """A call begins at `t`. `in_progress`: it was under way when the recorder started."""
    t: float
    direction: str
    ringing_since: float | None
    in_progress: bool = False


@dataclass(frozen=True)
class Flash:
    """A hook flash inside the call (on-hook from `t` for `length` seconds)."""
    t: float
    length: float


@dataclass(frozen=True)
class End:
    """The call ended when the hook went down at `t`."""
    t: float


@dataclass(frozen=True)
class Missed:
    """Ringing from `t` to `until` that nobody answered."""
    t: float
    until: float


@dataclass
class CallMachine:
    """One line's call state. Feed it debounced hook transitions, ring episodes and clock ticks."""

    flash_max: float
    has_ring_detector: bool
    state: str = "idle"                     # idle | ringing | call | on_hook
    ringing_since: float | None = None
    direction: str | None = None
    on_hook_since: float | None = None

    def ring(self, t: float) -> list:
        """A ringing episode began at `t` (ignored during a call: that is call waiting)."""
        if self.state == "idle":
            self.state, self.ringing_since = "ringing", t
        return []

    def ring_over(self, t: float, since_last_ring: float) -> list:
        """The ringing episode ended (no burst for a while) without an answer."""
        if self.state != "ringing":
            return []
        start, self.state, self.ringing_since = self.ringing_since, "idle", None
        return [Missed(start, since_last_ring)]

    def hook(self, t: float, off_hook: bool) -> list:
        """A settled hook transition whose first edge was at `t`."""
        if off_hook:
            if self.state == "on_hook":
                length = t - self.on_hook_since
                if length < self.flash_max:
                    self.state, self.on_hook_since = "call", None
                    return [Flash(t - length, length)]
                return self._end(self.on_hook_since) + self._start(t)
            if self.state in ("idle", "ringing"):
                return self._start(t)
            return []
        if self.state == "call":
            self.state, self.on_hook_since = "on_hook", t
        return []

    def already_off_hook(self, t: float) -> list:
        """The handset was off-hook when the recorder started (a restart mid-call): record the
        rest of the call, direction unknown (the call rules play no notice into a conversation)."""
        if self.state != "idle":
            return []
        self.state, self.direction = "call", "unknown"
        return [Start(t, "unknown", None, in_progress=True)]

    def tick(self, now: float) -> list:
        """Let time pass: end a call whose on-hook outlasted the flash window."""
        if self.state == "on_hook" and now - self.on_hook_since >= self.flash_max:
            return self._end(self.on_hook_since)
        return []

    def deadline(self) -> float | None:
        """The next instant at which `tick` has something to do, or None."""
        if self.state == "on_hook":
            return self.on_hook_since + self.flash_max
        return None

    def _start(self, t: float) -> list:
        if self.state == "ringing":
            direction = "incoming"
        else:
            direction = "outgoing" if self.has_ring_detector else "unknown"
        ringing_since = self.ringing_since
        self.state, self.direction, self.ringing_since = "call", direction, None
        return [Start(t, direction, ringing_since)]

    def _end(self, t: float) -> list:
        self.state, self.on_hook_since, self.direction = "idle", None, None
        return [End(t)]
