"""The finaliser: encodes ended calls into the archive one at a time, off every line's thread."""

import logging
import queue

from appliance.service import Service

log = logging.getLogger(__name__)


class Finaliser(Service):
    """Runs finalisation jobs (callables) one at a time, in order."""

    def __init__(self):
        super().__init__("finaliser")
        self.jobs: "queue.Queue" = queue.Queue()

    def submit(self, job) -> None:
        """Queue a callable; never blocks."""
        self.jobs.put(job)

    def serve(self) -> None:
        while True:
            try:
                job = self.jobs.get(timeout=self.beat_s)
            except queue.Empty:
                self.beat()
                continue
            try:
                if job is None:
                    return
                self.beat()
                job()
            except Exception:
                # A failed job leaves its spool in place: it is recovered at the next start.
                log.exception("finalising a call failed")
            finally:
                self.jobs.task_done()

    def wait_idle(self) -> None:
        """Block until every queued job has run."""
        self.jobs.join()

    def close(self) -> None:
        """Run what is queued, then end the thread."""
        self.jobs.put(None)
        self.join()
