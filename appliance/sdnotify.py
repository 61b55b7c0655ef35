"""systemd's notification protocol (sd_notify) without a library: datagrams to `$NOTIFY_SOCKET`.

Started by systemd with `Type=notify`, the recorder says READY=1 once it records, STATUS= what it
is doing, STOPPING=1 when it shuts down, and WATCHDOG=1 while its work goes on (`WatchdogSec=`).
Run from a terminal (no `$NOTIFY_SOCKET`) every call does nothing.
"""

import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send `fields` ("READY=1", "STATUS=text", ...) to systemd in one message. Returns False when
    the process was not started by systemd or the message could not be sent (never raises: a
    notification must not stop the recorder)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]        # a socket in the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ["NOTIFY_SOCKET"], exc)
        return False
    return True


def watchdog_timeout() -> float | None:
    """The watchdog timeout systemd gave this process (`WatchdogSec=`), in seconds; None when there
    is none, or when it was meant for another process (a parent's environment, inherited)."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        timeout = int(usec) / 1e6
    except ValueError:
        return None
    return timeout if timeout > 0 else None


class Watchdog(threading.Thread):
    """Sends WATCHDOG=1 three times per timeout while `problem(stall_s)` returns None; `stall_s`,
    half the timeout, is how long the work may make no progress. When `problem` returns a reason
    instead, the pings stop, the reason goes to the log and to systemd's STATUS=, and systemd
    restarts the service once the timeout passes. Without a watchdog timeout the thread ends at
    once."""

    def __init__(self, problem: Callable[[float], str | None]):
        super().__init__(name="watchdog", daemon=True)
        self.problem = problem
        self.timeout = watchdog_timeout()
        self._stopping = threading.Event()

    def run(self) -> None:
        if self.timeout is None:
            return
        reported = None
        while not self._stopping.wait(self.timeout / 3):
            problem = self.problem(self.timeout / 2)
            if problem is None:
                notify("WATCHDOG=1", *(["STATUS=recording"] if reported else []))
            elif problem != reported:
                log.error("%s: no more watchdog pings, so systemd restarts the service", problem)
                notify(f"STATUS={problem}")
            reported = problem

    def close(self) -> None:
        """Stop pinging."""
        self._stopping.set()
        if self.is_alive():
            self.join()
