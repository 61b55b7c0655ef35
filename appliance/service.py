"""Long-running threads as supervised services: each has a stop event, a heartbeat and one way to
wait between retries; an exception that escapes one is logged and marks it dead, and the watchdog
stops being fed while any service is dead or its heartbeat is stale.
"""

import logging
import queue
import threading
import time

log = logging.getLogger(__name__)


class Backoff:
    """Delays between retries: `first`, doubling up to `most`; `reset` after a success."""

    def __init__(self, first: float, most: float):
        self.first, self.most = first, most
        self.delay = first

    def next(self) -> float:
        """The delay to wait now; the one after is twice as long (up to `most`)."""
        delay, self.delay = self.delay, min(self.delay * 2, self.most)
        return delay

    def reset(self) -> None:
        """Start again from `first`."""
        self.delay = self.first


class Service(threading.Thread):
    """A thread that runs `serve` until `stop`. `serve` calls `beat` at least every `beat_s`
    seconds while it is well (a wait of its own counts: `wait` beats), and returns when `stopping`
    is set."""

    beat_s = 5.0    # longest time between two heartbeats of a well service

    def __init__(self, name: str):
        super().__init__(name=name, daemon=True)
        self.stopping = threading.Event()
        self.woken = threading.Event()
        self.heartbeat = time.monotonic()
        self.failure: str | None = None

    def serve(self) -> None:
        """The service's loop."""
        raise NotImplementedError

    def run(self) -> None:
        try:
            self.serve()
        except BaseException as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            raise           # to threading.excepthook: logged there

    def beat(self) -> None:
        """The service is making progress."""
        self.heartbeat = time.monotonic()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds` (less if woken), beating on the way; True when asked to stop."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set():
            self.beat()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.woken.wait(min(left, self.beat_s)):
                self.woken.clear()
                return self.stopping.is_set()
        return True

    def wake(self) -> None:
        """End the current `wait` now."""
        self.woken.set()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the loop to end and wait for it (up to `timeout` seconds)."""
        self.stopping.set()
        self.woken.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def problem(self, stale_s: float) -> str | None:
        """Why this service is not well, or None: it died, or beat last more than `stale_s` ago."""
        if self.failure is not None:
            return f"{self.name} died ({self.failure})"
        if self.is_alive() and time.monotonic() - self.heartbeat > max(stale_s, self.beat_s * 2):
            return f"{self.name} made no progress for {time.monotonic() - self.heartbeat:.0f} s"
        if not self.is_alive() and self.ident is not None and not self.stopping.is_set():
            return f"{self.name} ended"
        return None


class Worker(Service):
    """A service that runs queued jobs one at a time, in the order they were queued."""

    def __init__(self, name: str):
        super().__init__(name)
        self.jobs: "queue.Queue" = queue.Queue()
        self.submitted = 0      # jobs ever queued: see `settled`

    def submit(self, job) -> None:
        """Queue `job` (a callable); never blocks."""
        self.jobs.put(job)
        self.submitted += 1     # after the put: a job counted is already seen as queued

    def run_job(self, job) -> None:
        """Run one job. One that fails is logged, and the next runs: what it left undone (a spool,
        a row still `recording`) is recovered at the next start."""
        try:
            job()
        except Exception:
            log.exception("%s: a job failed", self.name)

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
                self.run_job(job)
            finally:
                self.jobs.task_done()

    @property
    def busy(self) -> bool:
        """Jobs are queued or running."""
        return self.jobs.unfinished_tasks > 0

    def wait_idle(self) -> None:
        """Block until every queued job has run."""
        self.jobs.join()

    def close(self, timeout: float | None = None) -> None:
        """Run what is queued, then end (waiting up to `timeout` seconds)."""
        self.jobs.put(None)
        self.join(timeout)


def log_uncaught(args: threading.ExceptHookArgs) -> None:
    """`threading.excepthook`: log an exception that ended a thread (a Service is marked dead)."""
    if args.exc_type is SystemExit:
        return
    thread = args.thread
    if isinstance(thread, Service) and thread.failure is None:
        thread.failure = f"{args.exc_type.__name__}: {args.exc_value}"
    log.critical("thread %s died", thread.name if thread is not None else "?",
                 exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def install_excepthook() -> None:
    """Log the exception that ends any thread, and mark a service dead by it."""
    threading.excepthook = log_uncaught


def settled(workers: list[Worker]) -> bool:
    """No job queued or running in any of `workers`, which hand jobs on to one another. Looked at
    one after the other, each could seem idle while a job moves from one not yet looked at to one
    already looked at; a count of jobs given, the same before and after the look, rules that out."""
    before = [worker.submitted for worker in workers]
    return not any(worker.busy for worker in workers) and [worker.submitted for worker in workers] == before
