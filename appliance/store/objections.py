"""The do-not-record list (GDPR Art. 21): numbers whose calls the appliance does not record, because
the person objected.

Numbers are kept only as their keyed hash (`appliance.store.subjects`) and a hint of their last
three digits, so the list gives nobody's number away, and an erasure of the person leaves it in
force. The recorder asks `objected(number)` at the start of each call, on a line's or the relay's
thread: that only looks into a set in memory, which the service's own thread reloads from the
catalogue every `REFRESH_S` seconds (the web UI and the command line change the table).
"""

import logging
import time

from appliance.clock import iso_utc
from appliance.contacts import ContactsError, normalise
from appliance.errors import CallrecError
from appliance.service import Service
from appliance.store.catalogue import Catalogue, audit
from appliance.store.subjects import subject_hash, subject_key

log = logging.getLogger(__name__)

REFRESH_S = 2.0
MAX_NOTE = 500


class ObjectionError(CallrecError):
    """A do-not-record change that cannot be made (no number, a note too long)."""


class Objections(Service):
    """The do-not-record list of one catalogue."""

    def __init__(self, catalogue: Catalogue, data_dir, country_code: str = "32"):
        super().__init__("objections")
        self.catalogue = catalogue
        self.country_code = country_code
        self._key = subject_key(data_dir)
        self._subjects: frozenset[str] = frozenset()

    def _subject(self, number: str) -> str:
        try:
            normalise(number, self.country_code)
        except ContactsError:
            raise ObjectionError("not a phone number: digits, optionally + first, with spaces, dots, dashes or "
                                 "slashes between") from None
        return subject_hash(self._key, number, self.country_code)

    def add(self, number: str, actor: str, note: str | None = None, address: str | None = None) -> bool:
        """Put a number on the list (audited, without the number); False if it was on it already."""
        subject = self._subject(number)
        if note is not None and len(note) > MAX_NOTE:
            raise ObjectionError("a note is at most {n} characters", n=MAX_NOTE)
        hint = "…" + normalise(number, self.country_code)[-3:]
        with self.catalogue.transaction() as db:
            added = db.execute("INSERT OR IGNORE INTO objections (subject, hint, added_at, added_by, note) "
                               "VALUES (?, ?, ?, ?, ?)", [subject, hint, iso_utc(time.time()), actor, note]).rowcount
            if added:
                audit(db, actor, "do-not-record", None, f"{hint} ({subject[:12]})", address)
        self.refresh()
        return bool(added)

    def remove(self, number: str, actor: str, address: str | None = None) -> bool:
        """Take a number off the list (audited); False if it was not on it."""
        subject = self._subject(number)
        with self.catalogue.transaction() as db:
            row = db.execute("SELECT hint FROM objections WHERE subject = ?", [subject]).fetchone()
            if row is not None:
                db.execute("DELETE FROM objections WHERE subject = ?", [subject])
                audit(db, actor, "record-again", None, f"{row[0]} ({subject[:12]})", address)
        self.refresh()
        return row is not None

    def listed(self, number: str) -> bool:
        """Whether a number is on the list, read from the catalogue."""
        with self.catalogue.read() as db:
            return db.execute("SELECT 1 FROM objections WHERE subject = ?", [self._subject(number)]).fetchone() is not None

    def entries(self) -> list[dict]:
        """The list, newest first: hint, when, by whom, note (never the number)."""
        with self.catalogue.read() as db:
            return [dict(row) for row in db.execute(
                "SELECT subject, hint, added_at, added_by, note FROM objections ORDER BY added_at DESC")]

    def refresh(self) -> None:
        """Reload the set `objected` looks into."""
        with self.catalogue.read() as db:
            self._subjects = frozenset(row[0] for row in db.execute("SELECT subject FROM objections"))

    def objected(self, number: str | None) -> bool:
        """Whether calls of this number must not be recorded (from memory: never waits)."""
        if not number or not self._subjects:
            return False
        return subject_hash(self._key, number, self.country_code) in self._subjects

    def serve(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception:
                # The list in memory stays as it was; the next pass tries again.
                log.exception("cannot reload the do-not-record list")
            if self.wait(REFRESH_S):
                return
