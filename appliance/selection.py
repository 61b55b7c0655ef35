"""Which calls of a line are recorded when recording must stay occasional: a schedule of days and
hours, and a share of calls (one call in N).

Data-protection authorities ask that recording for training be occasional, not permanent or
systematic (the CNIL's guidance on recording calls at work). A line's `schedule` lists when its calls
may be recorded, e.g. `["mon-fri 09:00-12:00", "sat 10:00-13:00"]` (a window that ends before it
starts runs past midnight); the call's start, in the box's local time, decides. `record_one_in = N`
keeps one call in N: of every N calls, one chosen at random, so the share is exact over each run
of N calls and nobody can tell beforehand which call it will be.
"""

import random
import re
from dataclasses import dataclass
from datetime import datetime

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ENTRY = re.compile(r"\s*(?P<days>[a-z,\-]+)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*",
                    re.IGNORECASE)


@dataclass(frozen=True)
class Window:
    """Days of the week (0 = Monday) and minutes of the day from `start` to `end` (`end` ≤ `start`:
    the window runs on past midnight into the next day)."""
    days: frozenset[int]
    start: int
    end: int

    def holds(self, when: datetime) -> bool:
        """Whether the local time `when` falls inside the window."""
        minute, day = when.hour * 60 + when.minute, when.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        return ((day in self.days and minute >= self.start)
                or ((day - 1) % 7 in self.days and minute < self.end))


def _minutes(text: str) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if hours > 24 or minutes > 59 or (hours == 24 and minutes):
        raise ValueError(f"{text!r} is not a time of day (00:00 to 24:00)")
    return hours * 60 + minutes


def _days(text: str) -> frozenset[int]:
    days = set()
    for part in text.lower().split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"{part!r} is not a day or a range of days ({', '.join(DAYS)}, e.g. mon-fri)")
        a, b = DAYS.index(first), DAYS.index(last or first)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(days)


def parse_window(entry: str) -> Window:
    """Read one schedule entry such as `"mon-fri 09:00-17:30"`; a malformed one raises ValueError
    saying what was expected."""
    match = _ENTRY.fullmatch(entry)
    if match is None:
        raise ValueError(f"{entry!r}: expected days and hours, e.g. \"mon-fri 09:00-17:30\"")
    try:
        start, end = _minutes(match["start"]), _minutes(match["end"])
        if start == end:
            raise ValueError("the window is empty (it starts when it ends)")
        return Window(_days(match["days"]), start, end)
    except ValueError as exc:
        raise ValueError(f"{entry!r}: {exc}") from None


def in_schedule(schedule: list[str], when: datetime) -> bool:
    """Whether a call starting at local time `when` may be recorded (an empty schedule: always)."""
    return not schedule or any(parse_window(entry).holds(when) for entry in schedule)


class Selection:
    """One line's choice of the calls to record under its `schedule` and `record_one_in`. It keeps
    where the line is in its current run of N calls (in memory: a restart starts a new run)."""

    def __init__(self, schedule: list[str], one_in: int, rng: random.Random | None = None):
        self.schedule, self.one_in = list(schedule), one_in
        self._rng = rng or random.SystemRandom()
        self._left, self._chosen = 0, 0

    def refusal(self, when: datetime) -> str | None:
        """Why a call starting at local time `when` is not recorded (`off-schedule`, `not-selected`), or None
        when it is. Only calls inside the schedule take a place in the share's runs."""
        if not in_schedule(self.schedule, when):
            return "off-schedule"
        if self.one_in == 1:
            return None
        if self._left == 0:
            self._left, self._chosen = self.one_in, self._rng.randrange(self.one_in)
        self._left -= 1
        return None if self._left == self._chosen else "not-selected"


def selection_for(rules, current: Selection | None = None) -> Selection:
    """The selection for a line's call rules (`schedule`, `record_one_in`): `current` when they
    did not change (its run of calls goes on), else a new one."""
    if current is not None and (current.schedule, current.one_in) == (rules.schedule, rules.record_one_in):
        return current
    return Selection(rules.schedule, rules.record_one_in)
