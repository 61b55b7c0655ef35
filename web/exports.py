"""Signed export bundles made in the background: the page (or API client) follows the progress and
downloads the bundle when it is ready. The bundle is written to disk and streamed from there, so
memory stays flat whatever its size; it is removed an hour after it was made.
"""

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from appliance.catalogue import Catalogue
from appliance.evidence import export_bundle

log = logging.getLogger(__name__)

KEEP_S = 3600


@dataclass
class ExportJob:
    """One bundle being made for one principal."""

    id: str
    owner: str                  # the actor who asked; only they may follow or fetch it
    call_ids: list[int]
    path: Path
    done: int = 0
    total: int = 0
    state: str = "running"      # running, ready, failed
    error: str | None = None
    created: float = field(default_factory=time.time)

    def public(self) -> dict:
        """What the progress page and the API show."""
        return {"id": self.id, "state": self.state, "done": self.done, "total": self.total,
                "calls": len(self.call_ids), "error": self.error}


class Exports:
    """The export jobs of the web process."""

    def __init__(self, catalogue: Catalogue, data_dir: Path, folder: Path):
        self.catalogue = catalogue
        self.data_dir = data_dir
        self.folder = folder
        self._jobs: dict[str, ExportJob] = {}
        self._lock = threading.Lock()
        self.sweep(keep_s=0)            # bundles left by an earlier run are stale personal data

    def start(self, call_ids: list[int], owner: str, address: str | None) -> ExportJob:
        """Start making a bundle of `call_ids` in the background."""
        self.sweep()
        job_id = secrets.token_urlsafe(12)
        job = ExportJob(job_id, owner, list(call_ids), self.folder / f"{job_id}.zip", total=len(call_ids))
        with self._lock:
            self._jobs[job_id] = job
        threading.Thread(target=self._run, args=(job, address), name=f"export-{job_id}", daemon=True).start()
        return job

    def _run(self, job: ExportJob, address: str | None) -> None:
        def progress(done, total):
            job.done, job.total = done, total
        try:
            export_bundle(self.catalogue, self.data_dir, job.call_ids, job.path, job.owner, address, progress)
            job.state = "ready"
        except Exception as exc:        # the page must say what went wrong, whatever it was
            log.exception("export %s failed", job.id)
            job.state, job.error = "failed", str(exc)

    def get(self, job_id: str, owner: str) -> ExportJob | None:
        """A job of `owner`'s, or None."""
        with self._lock:
            job = self._jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    def sweep(self, keep_s: float = KEEP_S) -> None:
        """Remove bundles older than `keep_s` seconds."""
        now = time.time()
        with self._lock:
            for job_id, job in list(self._jobs.items()):
                if now - job.created > keep_s and job.state != "running":
                    job.path.unlink(missing_ok=True)
                    del self._jobs[job_id]
        known = {job.path for job in self._jobs.values()}
        for path in self.folder.glob("*.zip*"):
            if path not in known and now - path.stat().st_mtime > keep_s:
                path.unlink(missing_ok=True)
