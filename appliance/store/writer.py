"""The recorder's one catalogue writer: a thread that owns the catalogue's writes of the calls in
progress, runs them in the order they were asked for, and retries each until it commits.

Real-time threads (capture, the RTP loop) and the line controllers never wait for SQLite: they
queue a step here and go on. A catalogue that is locked by another process, busy, or failing
(an I/O error, a full disk) delays the rows of a call, never its audio; they catch up once the
catalogue takes writes again. A step is a function that writes in one transaction and only then
changes anything outside it, so running it again after a failure is safe.
"""

import logging
import sqlite3
import time

from appliance.service import Backoff, Worker

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.05
RETRY_MOST_S = 2.0
REPORT_EVERY_S = 30.0   # a catalogue that keeps refusing is logged this often, not at every retry


class CatalogueWriter(Worker):
    """Runs catalogue steps one at a time, in order, each until it commits."""

    def __init__(self, on_full=None):
        super().__init__("catalogue-writer")
        self.on_full = on_full      # called when SQLite finds the disk full; True if it made room
        self.refusing_since: float | None = None    # monotonic: the catalogue refuses writes since

    def run_job(self, step) -> None:
        backoff, reported = Backoff(RETRY_FIRST_S, RETRY_MOST_S), 0.0
        while True:
            self.beat()
            try:
                step()
            except sqlite3.OperationalError as exc:
                # Locked, busy, an I/O error, a full disk: all pass; the step waits and goes again.
                if "full" in str(exc) and self.on_full is not None and self.on_full():
                    continue            # the reserve gave room back: at once
                now = time.monotonic()
                if self.refusing_since is None:
                    self.refusing_since = now
                if now - reported >= REPORT_EVERY_S:
                    log.warning("the catalogue refuses writes (%s); the calls' rows wait, their audio "
                                "does not", exc)
                    reported = now
                if self.wait(backoff.next()):
                    log.error("stopping with a catalogue that refuses writes: a step is left undone "
                              "(its call is recovered from its spool at the next start)")
                    return
                continue
            except Exception:
                # A defect in the step, not a passing state of the catalogue: trying again would
                # fail the same way. What it left undone is recovered at the next start.
                log.exception("a catalogue step failed")
            if self.refusing_since is not None:
                log.info("the catalogue takes writes again after %.1f s",
                         time.monotonic() - self.refusing_since)
                self.refusing_since = None
            return

    def close(self, timeout: float = 10.0) -> None:
        """Run what is queued (giving up after `timeout` s of a catalogue that refuses), then end."""
        super().close(timeout)
        if self.is_alive():
            self.stopping.set()
            self.join()
