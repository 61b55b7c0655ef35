"""Signed export bundles made in the background: the page (or API client) follows the progress and
downloads the bundle when it is ready. The bundle is written to disk and streamed from there, so
memory stays flat whatever its size.

A bundle is a copy of personal data: each principal has one at a time (a new export replaces the
last), it is removed an hour after it was made, at once when one of its calls is erased, and at
the next start. Whoever follows or fetches it is checked again each time: the owner, still a
supervisor or admin, still allowed every line in it. An export that would eat into the free space
the store keeps for recording, counting the bundles still being written, is refused: the cleaner
would otherwise delete recordings to make room for it.
"""

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance.errors import CallrecError
from appliance.signer import SigningWaits
from appliance.store.evidence import export_bundle
from web.i18n import data_size, error_text
from web.restriction import openings

log = logging.getLogger(__name__)

KEEP_S = 3600
SWEEP_S = 60


class ExportRefused(CallrecError):
    """An export that cannot be made now; the message says why."""


SIGNING_WAITS = ("signing waits for a login: the device key opens when a user logs in after the "
                 "appliance (or its signer) started; log out and in again, then export")


@dataclass(frozen=True)
class CustomerRequest:
    """What a bundle made for a customer carries besides the recordings: the access report, the
    controller's facts and the ids of their calls that have no recording."""

    report: str
    controller: dict
    without_recording: tuple[int, ...] = ()


@dataclass
class ExportJob:
    """One bundle being made for one principal."""

    id: str
    owner: str                  # the principal's key; only they may follow or fetch it
    actor: str                  # for the audit trail
    call_ids: list[int]
    path: Path
    lines: frozenset[str] = frozenset()     # the lines its calls were on
    size: int = 0                           # the bytes its recordings take
    sizes: list[int] = field(default_factory=list)      # each recording's, in call_ids' order
    written: int = 0                        # the bytes of the recordings already in the bundle
    done: int = 0
    total: int = 0
    state: str = "running"      # running, ready, failed
    failure: Exception | None = None
    created: float = field(default_factory=time.time)
    request: "CustomerRequest | None" = None   # a customer's request: the report and facts to add

    def public(self) -> dict:
        """What the progress page and the API show."""
        return {"id": self.id, "state": self.state, "done": self.done, "total": self.total,
                "calls": len(self.call_ids), "size": self.size, "written": self.written,
                "error": error_text(self.failure) if self.failure is not None else None}


class Exports:
    """The export jobs of the web process."""

    def __init__(self, backend, folder: Path):
        self.backend = backend
        self.folder = folder
        self._jobs: dict[str, ExportJob] = {}
        self._erased: set[int] = set()         # calls erased since the start: no bundle may keep them
        self._lock = threading.Lock()
        for path in self.folder.glob("*.zip*"):     # bundles left by an earlier run are stale
            path.unlink(missing_ok=True)
        threading.Thread(target=self._sweeper, name="export-sweeper", daemon=True).start()

    def start(self, call_ids: list[int], principal, address: str | None,
              request: CustomerRequest | None = None) -> ExportJob:
        """Start making a bundle of `call_ids` for `principal` in the background (replacing their
        last one), with a customer's `request` when it answers one. A sealed store must be unlocked
        (StoreLocked): the bundle holds the recordings in the clear."""
        opener = self.backend.reading()
        catalogue = self.backend.catalogue
        calls = [catalogue.get_call(call_id) for call_id in call_ids]
        for call in calls:
            if not openings().allows(principal, call):
                raise ExportRefused("call {id} is restricted: only an admin who gives a reason may export it",
                                    id=call["id"])
        lines = frozenset(call["line"] for call in calls)
        job_id = secrets.token_urlsafe(12)
        sizes = [call["size_bytes"] or 0 for call in calls]
        job = ExportJob(job_id, principal.key, principal.actor, list(call_ids), self.folder / f"{job_id}.zip",
                        lines=lines, size=sum(sizes), sizes=sizes, total=len(call_ids),
                        request=request)
        with self._lock:
            for old in [j for j in self._jobs.values() if j.owner == principal.key and j.state != "running"]:
                self._drop(old)
            if any(j.owner == principal.key for j in self._jobs.values()):
                raise ExportRefused("an export of yours is still being made: wait for it to finish")
            self._check_room(job.size)          # under the lock: two exports at once see each other
            self._jobs[job_id] = job
        threading.Thread(target=self._run, args=(job, address, opener), name=f"export-{job_id}", daemon=True).start()
        return job

    def _still_to_write(self) -> int:
        """The bytes the bundles being made will still write."""
        total = 0
        for job in self._jobs.values():
            if job.state == "running":
                try:
                    written = Path(f"{job.path}.part").stat().st_size
                except FileNotFoundError:
                    written = 0
                total += max(job.size - written, 0)
        return total

    def _check_room(self, size: int) -> None:
        store = self.backend.store
        room = store.free_bytes() - store.floor_bytes() - self._still_to_write()
        if size > room:
            raise ExportRefused("this export needs {needed}, and only {free} are free above what "
                                "the appliance keeps for recording: export fewer calls",
                                needed=data_size(size), free=data_size(max(room, 0)))

    def _run(self, job: ExportJob, address: str | None, opener) -> None:
        def progress(done, total):
            job.done, job.total, job.written = done, total, sum(job.sizes[:done])
        try:
            extra = {}
            if job.request is not None:
                extra = {"report": job.request.report, "controller": job.request.controller,
                         "without_recording": list(job.request.without_recording)}
            try:
                export_bundle(self.backend.catalogue, self.backend.data_dir, job.call_ids, job.path, job.actor,
                              address, progress, opener=opener, signer=self.backend.signer, **extra)
            except SigningWaits:
                raise ExportRefused(SIGNING_WAITS) from None
            with self._lock:
                if self._erased & set(job.call_ids):
                    raise ExportRefused("a call in this export was erased while it was being made")
            job.state = "ready"
        except Exception as exc:        # the page must say what went wrong, whatever it was
            log.exception("export %s failed", job.id)
            job.state, job.failure = "failed", exc
            job.path.unlink(missing_ok=True)

    def get(self, job_id: str, principal) -> ExportJob | None:
        """The job `job_id` if it is `principal`'s and they may still export every line in it, or None."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.owner != principal.key or not principal.at_least("supervisor"):
            return None
        return job if all(principal.may_see(line) for line in job.lines) else None

    def forget_calls(self, call_ids: set[int]) -> None:
        """Remove the bundles holding any of these calls (they were just erased)."""
        with self._lock:
            self._erased |= call_ids
            for job in [j for j in self._jobs.values() if call_ids & set(j.call_ids) and j.state != "running"]:
                self._drop(job)

    def sweep(self, keep_s: float = KEEP_S) -> None:
        """Remove finished bundles older than `keep_s` seconds."""
        now = time.time()
        with self._lock:
            for job in [j for j in self._jobs.values() if now - j.created > keep_s and j.state != "running"]:
                self._drop(job)

    def _drop(self, job: ExportJob) -> None:
        job.path.unlink(missing_ok=True)
        Path(f"{job.path}.part").unlink(missing_ok=True)
        self._jobs.pop(job.id, None)

    def _sweeper(self) -> None:
        while True:
            time.sleep(SWEEP_S)
            self.sweep()
