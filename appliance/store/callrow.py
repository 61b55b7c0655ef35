"""The store's side of a call in progress, for analog lines and SIP trunks alike: its row, keys,
pauses and counters go to the catalogue writer, its audio to the finaliser once it has ended.

Nothing here waits for the catalogue: every write is a step queued on the writer, in order, so the
row is inserted before anything names its id, and a call ended before its row could be written is
finalised once it is. Counters (flashes, overruns, capture errors) are kept in memory and written
with the call's end.
"""

import errno
import logging
from dataclasses import dataclass
from pathlib import Path

from appliance.service import Worker
from appliance.store.archive import SPOOL_DIR, encode_spool, record_archive
from appliance.store.catalogue import Catalogue
from appliance.store.reserve import Reserve
from appliance.store.sealing import Sealer
from appliance.store.spool import SpoolWriter
from appliance.store.writer import CatalogueWriter

log = logging.getLogger(__name__)

COUNTERS = ("flashes", "capture_errors", "overruns")


@dataclass
class Desk:
    """What every call's store side shares: the catalogue, its writer, the finaliser, the archive's
    format, and who hears of each finished call (`on_finished(row)`, on the writer's thread)."""

    catalogue: Catalogue
    writer: CatalogueWriter
    finaliser: Worker
    data_dir: Path
    format: str
    opus_bitrate: int
    flush_interval_s: float
    on_finished: object = None
    reserve: Reserve | None = None
    objections: object = None           # the do-not-record list (None: there is none)
    legal_facts: object = None          # (purpose, started_at) -> legal basis and retention end now
    sealer: Sealer | None = None        # a sealed store's: spools and archive files are sealed

    def with_legal_facts(self, fields: dict) -> dict:
        """A new row's `fields` with its purpose's legal basis and retention end as the settings
        say when it is written, kept with the call whatever they say later."""
        if self.legal_facts is None:
            return fields
        return {**fields, **self.legal_facts(fields["purpose"], fields["started_at"])}

    def objected(self, number: str | None) -> bool:
        """Whether a call of this number must not be recorded (never waits)."""
        return self.objections is not None and self.objections.objected(number)

    def spool(self, name: str, rate: int, channels: int = 1) -> SpoolWriter:
        """A new spool file `name` for a call's audio (sealed in a sealed store). A disk found full
        gets the reserve back."""
        on_full = self.reserve.release if self.reserve is not None else None
        path = Path(self.data_dir) / SPOOL_DIR / name
        try:
            return SpoolWriter(path, rate, channels, self.flush_interval_s, on_full, self.sealer)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or on_full is None or not on_full():
                raise
            return SpoolWriter(path, rate, channels, self.flush_interval_s, on_full, self.sealer)

    def finished(self, call_id: int) -> None:
        """Tell `on_finished` of a call whose row is final (a step of its own: it writes too)."""
        if self.on_finished is not None:
            self.writer.submit(lambda: self.on_finished(self.catalogue.get_call(call_id)))

    def missed(self, **fields) -> None:
        """A call nobody answered: a `missed` row, no audio."""
        def insert():
            call_id = self.catalogue.add_call(state="missed", **self.with_legal_facts(fields))
            self.finished(call_id)
        self.writer.submit(insert)


class CallRow:
    """One call's row and what goes with it, written behind the call as it goes."""

    def __init__(self, desk: Desk):
        self.desk = desk
        self.id: int | None = None      # known once the writer has inserted the row
        self.counters = dict.fromkeys(COUNTERS, 0)

    def insert(self, **fields) -> None:
        """Write the call's row (the first step of every call: the others name its id)."""
        def step():
            self.id = self.desk.catalogue.add_call(**self.desk.with_legal_facts(fields))
        self._step(step)

    def _step(self, step) -> None:
        self.desk.writer.submit(step)

    def update(self, **fields) -> None:
        """Change fields of the row."""
        self._step(lambda: self.desk.catalogue.update_call(self.id, **fields))

    def count(self, counter: str) -> None:
        """Add one to a counter (flashes, capture_errors, overruns); cheap, from any thread."""
        self.counters[counter] += 1

    def key(self, offset_s: float, key: str) -> None:
        """A key heard `offset_s` seconds into the recording."""
        self._step(lambda: self.desk.catalogue.add_digit(self.id, offset_s, key))

    def pause(self, offset_s: float, reason: str) -> None:
        """Silence stands in for the line from `offset_s` on."""
        self._step(lambda: self.desk.catalogue.add_pause(self.id, offset_s, reason))

    def resume(self, offset_s: float) -> None:
        """The pause ends at `offset_s`."""
        self._step(lambda: self.desk.catalogue.end_pause(self.id, offset_s))

    def finish(self, spool, state: str, **fields) -> None:
        """The call ended: close its spool, encode it into the archive and catalogue it as `state`
        with `fields` and the counters; then tell `on_finished`."""
        desk = self.desk

        def encode():       # on the finaliser's thread, once the row exists
            spool.close()
            encoded = encode_spool(desk.catalogue, desk.data_dir, self.id, desk.format, desk.opus_bitrate,
                                   desk.sealer, spool.stream)
            self._step(lambda: record(encoded))

        def record(encoded):
            record_archive(desk.catalogue, encoded, state, **fields, **self.counters)
            desk.finished(self.id)
        self._after_row(encode)

    def decline(self, spool, keep_number: bool, reason: str = "declined") -> None:
        """Recording was declined (`declined`: the caller's opt-out; `objected`: the number is on
        the do-not-record list): destroy the spool, its keys and pauses; the row stays `discarded`
        with the reason (without the number unless `keep_number`)."""
        def destroy():
            spool.close()
            spool.path.unlink(missing_ok=True)
            self._step(lambda: self.desk.catalogue.forget_declined(self.id, keep_number, reason))
        self._after_row(destroy)

    def _after_row(self, job) -> None:
        """Run `job` on the finaliser once every step before it (the row's insert first) is done."""
        self._step(lambda: self.desk.finaliser.submit(job))
