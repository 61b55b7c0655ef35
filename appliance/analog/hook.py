"""The line's GPIO inputs: hook (and ring) detectors read through gpiozero, debounced here.

gpiozero picks the pin factory (lgpio on a Pi, RPi.GPIO only if installed and chosen, the mock in
tests); this module never imports a backend. gpiozero's own `bounce_time` is not used: contact
chatter must be judged on the time of the first edge of a transition, which only our code keeps.
Callbacks run on the pin thread, so they only time-stamp the edge and queue it.
"""

import queue
import time
from dataclasses import dataclass

from gpiozero import DigitalInputDevice, GPIOZeroError

from appliance.errors import HardwareError


class Debouncer:
    """Turns raw edges into stable levels: a new level counts once it has held for `settle` seconds.

    The time reported for a transition is its first edge, so chatter does not shift call times.
    """

    def __init__(self, settle: float, level: bool = False):
        self.settle = settle
        self.level = level          # the stable level
        self._raw = level
        self._last_edge = 0.0
        self._first_edge: float | None = None

    def edge(self, t: float, level: bool) -> None:
        """Note a raw edge to `level` at monotonic time `t`."""
        if level == self._raw:
            return
        self._raw = level
        self._last_edge = t
        if level != self.level and self._first_edge is None:
            self._first_edge = t

    def poll(self, now: float) -> tuple[float, bool] | None:
        """Return (time of first edge, new level) once a transition has settled, else None."""
        if self._first_edge is None or now - self._last_edge < self.settle:
            return None
        first, self._first_edge = self._first_edge, None
        if self._raw == self.level:
            return None             # chatter that came back: no transition
        self.level = self._raw
        return first, self.level

    def deadline(self) -> float | None:
        """When `poll` may next report something, or None if nothing is pending."""
        return None if self._first_edge is None else self._last_edge + self.settle

    def settled_until(self, now: float) -> float:
        """Up to when the stable level is known for sure: the first edge of a pending change."""
        return now if self._first_edge is None else min(now, self._first_edge)


class RingMonitor:
    """Ringing is on while the ring input is active or was active less than `gap` seconds ago.

    A ring detector gives pulses or a steady level per burst; either way, the pause between bursts
    of a European cadence (about 4 s) is shorter than the default gap.
    """

    def __init__(self, gap: float):
        self.gap = gap
        self.active = False
        self.last_activity: float | None = None

    def edge(self, t: float, level: bool) -> bool:
        """Note a ring-input edge; return True if it begins a ringing episode."""
        began = not self.ringing(t)
        self.active = level
        self.last_activity = t
        return began and level

    def ringing(self, now: float) -> bool:
        """Is the line ringing, or between two bursts of the same ringing?"""
        return self.active or (self.last_activity is not None and now - self.last_activity < self.gap)

    def deadline(self) -> float | None:
        """When the current ringing episode ends if no new burst comes."""
        if self.active or self.last_activity is None:
            return None
        return self.last_activity + self.gap


@dataclass(frozen=True)
class Edge:
    """A raw edge on one of a line's inputs."""

    input: str       # "hook" or "ring"
    t: float         # monotonic seconds
    active: bool     # hook: off-hook; ring: ring detector active


class LineInputs:
    """The hook and optional ring inputs of one line, and its push buttons (to ground, so active
    low); their edges arrive on `edges`."""

    def __init__(self, hook_pin, hook_active: str, ring_pin=None, ring_active: str = "low",
                 buttons: dict | None = None, pin_factory=None):
        self.edges: "queue.Queue[Edge]" = queue.Queue()
        self.hook = self._input("hook", hook_pin, hook_active, pin_factory)
        self.ring = self._input("ring", ring_pin, ring_active, pin_factory) if ring_pin is not None else None
        self.buttons = {name: self._input(name, pin, "low", pin_factory)
                        for name, pin in (buttons or {}).items() if pin is not None}

    def _input(self, name: str, pin, active: str, pin_factory) -> DigitalInputDevice:
        # Pull away from the active level, as an opto-coupler's open collector needs.
        try:
            device = DigitalInputDevice(pin, pull_up=(active == "low"), pin_factory=pin_factory)
        except GPIOZeroError as exc:
            raise HardwareError(f"cannot use GPIO pin {pin!r} as the {name} input: {exc}") from None
        device.when_activated = lambda: self.edges.put(Edge(name, time.monotonic(), True))
        device.when_deactivated = lambda: self.edges.put(Edge(name, time.monotonic(), False))
        return device

    def off_hook(self) -> bool:
        """The hook input's level now."""
        return bool(self.hook.value)

    def close(self) -> None:
        """Release the pins."""
        for device in (self.hook, self.ring, *self.buttons.values()):
            if device is not None:
                device.close()
