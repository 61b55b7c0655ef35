"""The reserve: room kept on the recordings' file system for the moment it fills up.

A file of `size` bytes is allocated in advance (`<data>/reserve`, its blocks really taken). When a
write finds the disk full (a spool, the catalogue), the reserve is given back at once: the call
in progress goes on being written, and the catalogue can commit the cleaner's deletions, which
need room of their own in SQLite's write-ahead log. The cleaner, woken at once, makes room by its
usual rules; once there is room again beside the free-space floor, the reserve is taken anew.
While it is given back, the storage alarm says so.
"""

import errno
import logging
import os
import shutil
import threading
from pathlib import Path

from appliance.store.spool import fsync_dir

log = logging.getLogger(__name__)

RESERVE_NAME = "reserve"


class Reserve:
    """The reserve file of one data folder."""

    def __init__(self, data_dir: Path, size: int):
        self.path = Path(data_dir) / RESERVE_NAME
        self.size = size
        self._lock = threading.Lock()
        self.on_release = None      # called (from the thread that found the disk full) after a release

    @property
    def held(self) -> bool:
        """The reserve is in place (not given back)."""
        try:
            return self.path.stat().st_size >= self.size
        except OSError:
            return False

    def take(self, floor: int = 0) -> bool:
        """Allocate the reserve if it is not in place and the disk has its room beside `floor`
        bytes still free; True when it is in place."""
        with self._lock:
            if self.held:
                return True
            if shutil.disk_usage(self.path.parent).free - self.size < floor:
                return False
            partial = self.path.with_name(self.path.name + ".part")
            try:
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.posix_fallocate(fd, 0, self.size)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(partial, self.path)
                fsync_dir(self.path.parent)
            except OSError as exc:
                partial.unlink(missing_ok=True)
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    log.error("cannot allocate the reserve %s: %s", self.path, exc)
                return False
            log.info("reserve of %.0f MB in place at %s", self.size / 1e6, self.path)
            return True

    def release(self) -> bool:
        """The disk is full: give the reserve back. True when it was in place (room was freed)."""
        with self._lock:
            if not self.path.exists():
                return False
            self.path.unlink()
            log.error("the disk of %s is full: the reserve of %.0f MB is given back to the call in "
                      "progress and the catalogue", self.path.parent, self.size / 1e6)
        if self.on_release is not None:
            self.on_release()
        return True
