"""Time stamps: events are taken on the monotonic clock and shown as UTC wall time."""

import ctypes
import ctypes.util
import functools
import time
from datetime import datetime, timezone


def wall_from_mono(t: float) -> float:
    """Return the wall-clock time (epoch seconds) of monotonic instant `t`."""
    return time.time() - (time.monotonic() - t)


def local_from_mono(t: float) -> datetime:
    """The box's local date and time of monotonic instant `t` (for schedules of days and hours)."""
    return datetime.fromtimestamp(wall_from_mono(t)).astimezone()


def iso_utc(epoch: float) -> str:
    """Format epoch seconds as ISO 8601 UTC with milliseconds, e.g. 2026-11-23T10:05:00.123Z."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch_of(iso: str) -> float:
    """Epoch seconds of an ISO 8601 time as `iso_utc` writes it."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def iso_from_mono(t: float) -> str:
    """ISO 8601 UTC wall time of monotonic instant `t`."""
    return iso_utc(wall_from_mono(t))


TIME_ERROR = 5   # adjtimex(2): the kernel says the clock is not synchronised


@functools.cache
def _libc():
    # find_library runs ldconfig: once per process, not at every call's start.
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def clock_synchronised() -> bool:
    """Is the system clock synchronised (NTP or another source disciplined it)? A Pi has no
    battery clock: after a boot without network its time can be far off."""
    libc = _libc()
    timex = ctypes.create_string_buffer(512)   # struct timex, modes = 0: only read
    state = libc.adjtimex(timex)
    return state not in (-1, TIME_ERROR)
