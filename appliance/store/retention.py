"""The ring-buffered store: purposes and retention, holds, erasure and the cleaner.

A call is kept while its purpose needs it: the legal basis and the end of retention (counted from
`started_at`) are stored with the call when it is recorded, and again when it is re-classified, so
a later change of the settings does not lengthen what the customer was told; a purpose's retention
shortened since applies at once. It is kept only while the archive fits its cap and leaves the free-space
floor. The cleaner deletes expired calls, then, while over the cap or under the floor, the oldest
calls of the purposes with the lowest eviction rank (training before agreement before legal
obligation); it never touches a held or restricted call or one being recorded. Before it evicts
a call of a rank above 1 (kept for a contract or the law), it raises the alarm and waits
`protected_grace_hours`. When no call may go and the floor is crossed, recording goes on into
the reserve and an alarm is raised.

Every deletion leaves a tombstone (when, why, which id: no personal data) and a ledger entry. Rows
go first, in one transaction that also lists the files to delete; the files go after, and a crash
in between is finished at the next pass, so no recording outlives its row.
"""

import json
import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from appliance.store import ledger
from appliance.store.catalogue import SEND_AGAIN, Catalogue, audit
from appliance.clock import iso_utc
from appliance.config import Config, PurposeConfig, StoreConfig
from appliance.contacts import ContactsError, normalise
from appliance.errors import CallrecError
from appliance.store.outbox import Outbox
from appliance.store.personal import number_tag, opened_call, seal, sealed_call
from appliance.store.reserve import Reserve
from appliance.store.subjects import subject_hash, subject_key
from appliance.store.spool import fsync_dir
from appliance.webhook import erasure_event, serialised

log = logging.getLogger(__name__)

BATCH = 200
DEFAULT_BYTES_PER_HOUR = 8_000_000     # Opus at 16 kbit/s with headroom, before calls tell us
ALARM_KEY = "storage_alarm"
PROTECTED_KEY = "protected_eviction_alarm_since"    # when the cleaner first found only protected calls to evict


# Deletions that reach the offloaded copy too: an erasure, and the end of the purpose's retention.
# An eviction for space does not: keeping calls beyond the box's room is what offload is for.
COPIES_GO_TOO = ("erased", "expired")
MAX_REASON = 500


class StoreActionError(CallrecError):
    """A store action that is not allowed on this call (held, being recorded, unknown)."""


@dataclass
class CleanerReport:
    """What one cleaner pass did."""

    expired: int = 0
    evicted: int = 0
    archive_bytes: int = 0
    free_bytes: int = 0
    floor_bytes: int = 0
    alarm: str | None = None
    seconds: float = 0.0


class Store:
    """Store actions and the cleaner over one catalogue and data folder."""

    def __init__(self, catalogue: Catalogue, data_dir: Path, purposes: dict[str, PurposeConfig],
                 settings: StoreConfig, lines: int = 1, reserve: Reserve | None = None,
                 tell_webhook: bool = False):
        self.catalogue = catalogue
        self.reserve = reserve      # the recorder's; the web UI's store has none
        self.data_dir = Path(data_dir)
        self.purposes = purposes
        self.settings = settings
        self.lines = lines
        self.tell_webhook = tell_webhook    # erased calls are named to the webhook's receiver

    @classmethod
    def configured(cls, catalogue: Catalogue, data_dir: Path, config: Config, reserve: Reserve | None = None) -> "Store":
        """The store of `data_dir` under `config`: its purposes, limits, lines and webhook."""
        return cls(catalogue, data_dir, config.purpose, config.store, len(config.line_names), reserve,
                   tell_webhook=config.webhook is not None)

    # -- actions on one call ------------------------------------------------------------------------

    def expires_at(self, call: dict) -> str | None:
        """When a call goes (None if held or restricted, or if nothing says when): the end of
        retention recorded with it, or its purpose's retention today if that ends sooner."""
        if call["held"] or call.get("restricted"):
            return None
        ends = [end for end in (call.get("retention_end"), self._retention_end(call["purpose"], call["started_at"]))
                if end is not None]
        return min(ends) if ends else None

    def _retention_end(self, purpose: str, started_at: str) -> str | None:
        if purpose not in self.purposes:
            return None
        started = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
        return iso_utc((started + timedelta(days=self.purposes[purpose].retention_days)).timestamp())

    def legal_facts(self, purpose: str, started_at: str) -> dict:
        """What a call of `purpose` starting at `started_at` is kept under, as the settings say
        now: its legal basis and the end of its retention, stored with the call (empty for a
        purpose the settings do not know)."""
        if purpose not in self.purposes:
            return {}
        return {"legal_basis": self.purposes[purpose].legal_basis,
                "retention_end": self._retention_end(purpose, started_at)}

    def classify(self, call_id: int, purpose: str, actor: str, address: str | None = None) -> None:
        """Give a call another purpose (e.g. `agreement`), which changes how long it is kept."""
        if purpose not in self.purposes:
            raise StoreActionError("unknown purpose {purpose}: one of {purposes}", purpose=repr(purpose),
                                   purposes=", ".join(sorted(self.purposes)))
        call = self._call(call_id)
        facts = self.legal_facts(purpose, call["started_at"])
        with self.catalogue.transaction() as db:
            db.execute(f"UPDATE calls SET purpose = ?, legal_basis = ?, retention_end = ?, {SEND_AGAIN} WHERE id = ?",
                       [purpose, facts["legal_basis"], facts["retention_end"], call_id])
            ledger.record(db, "reclassified", call_id, call["sha256"],
                          f"{call['purpose']} -> {purpose} ({json.dumps(facts, ensure_ascii=False)})")
            self._audit(db, actor, "reclassify", call_id, f"{call['purpose']} -> {purpose}", address)

    def hold(self, call_id: int, reason: str, actor: str, address: str | None = None) -> None:
        """Keep a call whatever its retention or the disk says, until released."""
        if not reason.strip():
            raise StoreActionError("a hold needs a reason (a dispute, a claim…)")
        reason = self._checked(reason)
        call = self._call(call_id)
        with self.catalogue.transaction() as db:
            db.execute("UPDATE calls SET held = 1, hold_reason = ? WHERE id = ?",
                       [seal(db.sealer, reason, "hold_reason"), call_id])
            ledger.record(db, "held", call_id, call["sha256"])
            self._audit(db, actor, "hold", call_id, _clear_detail(db, reason), address)

    def release(self, call_id: int, actor: str, address: str | None = None) -> None:
        """End a hold: the call's retention applies again."""
        call = self._call(call_id)
        if not call["held"]:
            raise StoreActionError("call {id} is not on hold", id=call_id)
        with self.catalogue.transaction() as db:
            db.execute("UPDATE calls SET held = 0, hold_reason = NULL WHERE id = ?", [call_id])
            ledger.record(db, "released", call_id, call["sha256"])
            self._audit(db, actor, "release", call_id, _clear_detail(db, call["hold_reason"]), address)

    def restrict(self, call_id: int, reason: str, actor: str, address: str | None = None) -> None:
        """Restrict a call's processing (GDPR Art. 18): it is kept whatever its retention or the
        disk says, and nobody plays, downloads or exports it but an admin who gives a reason."""
        if not reason.strip():
            raise StoreActionError("a restriction needs a reason (the customer's request, its date…)")
        reason = self._checked(reason)
        call = self._call(call_id)
        with self.catalogue.transaction() as db:
            db.execute("UPDATE calls SET restricted = 1, restrict_reason = ? WHERE id = ?",
                       [seal(db.sealer, reason, "restrict_reason"), call_id])
            ledger.record(db, "restricted", call_id, call["sha256"])
            self._audit(db, actor, "restrict", call_id, _clear_detail(db, reason), address)

    def lift_restriction(self, call_id: int, actor: str, address: str | None = None) -> None:
        """End a call's restriction: it is played and kept as any other again."""
        call = self._call(call_id)
        if not call["restricted"]:
            raise StoreActionError("call {id} is not restricted", id=call_id)
        with self.catalogue.transaction() as db:
            db.execute("UPDATE calls SET restricted = 0, restrict_reason = NULL WHERE id = ?", [call_id])
            ledger.record(db, "restriction-lifted", call_id, call["sha256"])
            self._audit(db, actor, "lift-restriction", call_id, _clear_detail(db, call["restrict_reason"]), address)

    def rectify(self, call_id: int, actor: str, number: str | None = None, contact_name: str | None = None,
                address: str | None = None, country_code: str = "32", opener=None) -> list[str]:
        """Correct a call's number and/or its caller's name (GDPR Art. 16); a name also corrects the
        number's contact. The old values are kept only as keyed hashes in the ledger; a copy at the
        offload target is sent again with the corrected manifest. Returns the fields changed. A
        sealed store needs its `opener` (the web's, once unlocked)."""
        if self.catalogue.db.sealer is not None and opener is None:
            raise StoreActionError("the store is sealed: correct the call in the web UI, which opens it")
        call = opened_call(opener, self._call(call_id))
        changes = {}
        if number is not None:
            try:
                changes["number"] = normalise(number, country_code)
            except ContactsError:
                raise StoreActionError("not a phone number: digits, optionally + first, with spaces, dots, "
                                       "dashes or slashes between") from None
        if contact_name is not None:
            if not contact_name.strip() or len(contact_name) > MAX_REASON:
                raise StoreActionError("a name is 1 to {n} characters", n=MAX_REASON)
            changes["contact_name"] = contact_name.strip()
        changes = {name: value for name, value in changes.items() if value != call[name]}
        if not changes:
            return []
        key = subject_key(self.data_dir, opener)
        was = ", ".join(f"{name} was {subject_hash(key, call[name] or '', country_code)}" for name in changes)
        with self.catalogue.transaction() as db:
            stored = sealed_call(db.sealer, changes)
            db.execute(f"UPDATE calls SET {', '.join(f'{name} = ?' for name in stored)}, {SEND_AGAIN} "
                       f"WHERE id = ?", [*stored.values(), call_id])
            if "contact_name" in changes:
                number = changes.get("number", call["number"])
                if opener is None:
                    db.execute("UPDATE contacts SET name = ?, updated_at = ? WHERE number = ?",
                               [changes["contact_name"], iso_utc(time.time()), number])
                else:
                    db.execute("UPDATE contacts SET name = ?, updated_at = ? WHERE number_tag = ?",
                               [seal(db.sealer, changes["contact_name"], "contact.name"), iso_utc(time.time()),
                                number_tag(opener, number, country_code)])
            ledger.record(db, "rectified", call_id, call["sha256"], was)
            self._audit(db, actor, "rectify", call_id, ", ".join(changes), address)
        return list(changes)

    @staticmethod
    def _checked(reason: str) -> str:
        if len(reason) > MAX_REASON:
            raise StoreActionError("a reason is at most {n} characters", n=MAX_REASON)
        return reason.strip()

    def erase(self, call_id: int, actor: str, reason: str = "erasure request", address: str | None = None) -> None:
        """Delete one call (recording, row) for a data subject's request; a tombstone remains."""
        call = self._call(call_id)
        if call["held"]:
            raise StoreActionError("call {id} is on hold ({reason}): release it first", id=call_id,
                                   reason=call["hold_reason"])
        if call["state"] == "recording":
            raise StoreActionError("call {id} is being recorded: erase it once it has ended", id=call_id)
        self._delete([call], "erased", actor=actor, detail=reason, address=address)
        self.catalogue.checkpoint()

    def _call(self, call_id: int) -> dict:
        try:
            return self.catalogue.get_call(call_id)
        except KeyError:
            raise StoreActionError("there is no call {id}", id=call_id) from None

    @staticmethod
    def _audit(db, actor: str, action: str, call_id: int | None, detail: str | None,
               address: str | None = None) -> None:
        audit(db, actor, action, call_id, detail, address)

    # -- deletion -----------------------------------------------------------------------------------

    def _delete(self, calls: list[dict], reason: str, actor: str | None = None,
                detail: str | None = None, address: str | None = None) -> None:
        """Delete calls in one transaction (see `delete_rows`), then their files."""
        with self.catalogue.transaction() as db:
            self.delete_rows(db, calls, reason, actor, detail, address)
        self.finish_deletions()

    def delete_rows(self, db, calls: list[dict], reason: str, actor: str | None = None,
                    detail: str | None = None, address: str | None = None) -> None:
        """In `db`'s transaction: the calls' rows go, with their keys, pauses and waveforms; each
        leaves a tombstone, a ledger entry (and an audit entry when an `actor` asked), and its
        files are listed for `finish_deletions`. Erased calls are named to the webhook's receiver
        (`tell_webhook`), in the same transaction."""
        now = iso_utc(time.time())
        for call in calls:
            db.execute("INSERT INTO tombstones (call_id, deleted_at, reason) VALUES (?, ?, ?)",
                       [call["id"], now, reason])
            ledger.record(db, reason, call["id"], call["sha256"])
            if call["file"]:
                db.execute("INSERT OR IGNORE INTO pending_deletions (path) VALUES (?)", [call["file"]])
            if call.get("offloaded_at") and reason in COPIES_GO_TOO:
                db.execute("INSERT INTO offload_deletions (call_id, file, target, reason) VALUES (?, ?, ?, ?)",
                           [call["id"], call["file"], call["offload_target"], reason])
            if actor is not None:
                self._audit(db, actor, reason, call["id"], detail, address)
        if reason == "erased" and self.tell_webhook and calls:
            Outbox.put(db, str(uuid.uuid4()), serialised(erasure_event([call["id"] for call in calls], now)))
        marks = ", ".join("?" * len(calls))
        for table, column in (("digits", "call_id"), ("pauses", "call_id"), ("peaks", "call_id"), ("calls", "id")):
            db.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", [call["id"] for call in calls])

    def finish_deletions(self) -> int:
        """Delete the files listed for deletion (after a crash too); return how many."""
        with self.catalogue.transaction() as db:
            paths = [row[0] for row in db.execute("SELECT path FROM pending_deletions")]
        folders = set()
        for relative in paths:
            path = self.data_dir / relative
            path.unlink(missing_ok=True)
            folders.add(path.parent)
        for folder in folders:
            if folder.is_dir():
                fsync_dir(folder)
        if paths:
            with self.catalogue.transaction() as db:
                db.executemany("DELETE FROM pending_deletions WHERE path = ?", [[p] for p in paths])
        return len(paths)

    # -- the cleaner --------------------------------------------------------------------------------

    def archive_bytes(self) -> int:
        """What the recordings take, by the catalogue."""
        with self.catalogue.read() as db:
            return db.execute("SELECT value FROM totals WHERE name = 'archive_bytes'").fetchone()[0]

    def bytes_per_hour(self) -> float:
        """The archive's current rate, from the latest calls (a default before there are any)."""
        with self.catalogue.read() as db:
            size, seconds = db.execute(
                "SELECT SUM(size_bytes), SUM(duration_s) FROM (SELECT size_bytes, duration_s FROM calls "
                "WHERE size_bytes > 0 ORDER BY id DESC LIMIT 100)").fetchone()
        return size / seconds * 3600 if size and seconds else DEFAULT_BYTES_PER_HOUR

    def floor_bytes(self) -> int:
        """Free space to keep: the MB floor, or so many hours of recording on every line."""
        hours = self.settings.min_free_hours * self.bytes_per_hour() * self.lines
        return int(max(self.settings.min_free_mb * 1_000_000, hours))

    def free_bytes(self) -> int:
        """Free space on the data folder's file system, for this user."""
        return shutil.disk_usage(self.data_dir).free

    def clean(self, now: float | None = None) -> CleanerReport:
        """One pass: expire by purpose, then evict oldest first while over the cap or under the
        floor; raise or clear the alarm."""
        started = time.monotonic()
        now = time.time() if now is None else now
        report = CleanerReport()
        self.finish_deletions()
        for name, purpose in self.purposes.items():
            cutoff = iso_utc(now - purpose.retention_days * 86400)
            while batch := self._select(
                    "purpose = ? AND started_at < ? AND held = 0 AND restricted = 0 AND state != 'recording' "
                    "ORDER BY started_at", [name, cutoff], index="calls_expiry"):
                self._delete(batch, "expired")
                report.expired += len(batch)
        # The end recorded with each call, for a purpose since given a longer retention or removed.
        while batch := self._select("retention_end < ? AND held = 0 AND restricted = 0 AND state != 'recording' "
                                    "ORDER BY retention_end", [iso_utc(now)], index="calls_retention_end"):
            self._delete(batch, "expired")
            report.expired += len(batch)
        report.archive_bytes = self.archive_bytes()
        # Given back (the disk filled up), the reserve is room to make again before all else.
        reserve_out = self.reserve is not None and not self.reserve.held
        report.floor_bytes = self.floor_bytes() + (self.reserve.size if reserve_out else 0)
        report.free_bytes = self.free_bytes()
        cap = self.settings.max_archive_mb * 1_000_000
        short = False
        while (cap and report.archive_bytes > cap) or report.free_bytes < report.floor_bytes:
            short = True
            candidates, rank = self._eviction_candidates()
            if candidates and rank > 1 and not self._protected_may_go(now):
                report.alarm = self._protected_alarm_text(report, cap, candidates[0]["purpose"], now)
                break
            if not candidates:
                report.alarm = self._alarm_text(report, cap)
                break
            needed = max(report.archive_bytes - cap if cap else 0, report.floor_bytes - report.free_bytes)
            batch, freed = [], 0
            for call in candidates:           # just as many of the oldest as make room
                if freed >= needed:
                    break
                batch.append(call)
                freed += call["size_bytes"] or 0
            self._delete(batch, "evicted")
            report.evicted += len(batch)
            report.archive_bytes -= sum(call["size_bytes"] or 0 for call in batch)
            report.free_bytes = self.free_bytes()
        if not short and self._status(PROTECTED_KEY) is not None:
            self._set_status(PROTECTED_KEY, None)
        if self.reserve is not None and not self.reserve.take(self.floor_bytes()):
            report.alarm = report.alarm or self.reserve_alarm()
        self._set_alarm(report.alarm)
        report.seconds = time.monotonic() - started
        if report.expired or report.evicted:
            log.info("cleaner: %d expired, %d evicted; archive %.1f MB, %.1f MB free",
                     report.expired, report.evicted, report.archive_bytes / 1e6, report.free_bytes / 1e6)
        return report

    def reserve_alarm(self) -> str | None:
        """The alarm while the reserve is given back (the disk filled up), else None."""
        if self.reserve is None or self.reserve.held:
            return None
        return (f"the disk filled up: recording goes on into the reserve of {self.reserve.size / 1e6:.0f} MB "
                f"until the cleaner has made room; {self.free_bytes() / 1e6:.1f} MB free")

    def _eviction_candidates(self) -> tuple[list[dict], int]:
        """The oldest calls that may go for space, of the lowest eviction rank that has any, and
        that rank (calls being recorded, held or restricted never go)."""
        ranks: dict[int, list[str]] = {}
        for name, purpose in self.purposes.items():
            ranks.setdefault(purpose.eviction_rank, []).append(name)
        every = list(self.purposes)
        for rank in sorted(ranks):
            names = ranks[rank]
            where, params = f"purpose IN ({', '.join('?' * len(names))})", names
            if rank == min(ranks):          # with the first to go: a purpose since removed
                where, params = f"({where} OR purpose NOT IN ({', '.join('?' * len(every))}))", names + every
            candidates = self._select(f"held = 0 AND restricted = 0 AND file IS NOT NULL AND state != 'recording' "
                                      f"AND {where} ORDER BY started_at", params, index="calls_eviction", limit=20)
            if candidates:
                return candidates, rank
        return [], 0

    def _protected_may_go(self, now: float) -> bool:
        """Whether calls kept for an agreement or the law may be evicted: once the alarm saying so
        has stood for `protected_grace_hours` (it is raised now if it was not)."""
        since = self._status(PROTECTED_KEY)
        if since is None:
            self._set_status(PROTECTED_KEY, iso_utc(now))
            log.error("storage: only calls kept for a contract or the law are left to make room")
            return self.settings.protected_grace_hours == 0
        started = datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp()
        return now - started >= self.settings.protected_grace_hours * 3600

    def _protected_alarm_text(self, report: CleanerReport, cap: int, purpose: str, now: float) -> str:
        since = datetime.fromisoformat(self._status(PROTECTED_KEY).replace("Z", "+00:00")).timestamp()
        due = iso_utc(since + self.settings.protected_grace_hours * 3600)
        return (f"{self._shortage(report, cap)}: only calls kept for {purpose} (or a purpose kept longer) are left "
                f"to delete; the oldest will be evicted from {due} unless room is made: release holds, lift "
                f"restrictions, offload and delete, or add storage; recording goes on into the reserve")

    def _status(self, key: str) -> str | None:
        return self.catalogue.status(key)

    def _set_status(self, key: str, value: str | None) -> None:
        self.catalogue.set_status(key, value)

    def _select(self, where: str, params: list, index: str, limit: int = BATCH) -> list[dict]:
        with self.catalogue.read() as db:
            return [dict(row) for row in db.execute(
                f"SELECT * FROM calls INDEXED BY {index} WHERE {where} LIMIT {limit}", params)]

    def _alarm_text(self, report: CleanerReport, cap: int) -> str:
        with self.catalogue.read() as db:
            held, size = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM calls WHERE held = 1 OR restricted = 1").fetchone()
        over = self._shortage(report, cap)
        if not held:
            return (f"{over} and no recording is left to delete (other files take the disk): recording goes "
                    f"on into the reserve; free the disk or add storage")
        return (f"{over} and only held or restricted calls can go ({held} of them, {size / 1e6:.0f} MB): "
                f"recording goes on into the reserve; release holds, lift restrictions or add storage")

    @staticmethod
    def _shortage(report: CleanerReport, cap: int) -> str:
        return (f"the archive is over its cap of {cap / 1e6:.0f} MB" if cap and report.archive_bytes > cap
                else f"free space {report.free_bytes / 1e6:.0f} MB is under the floor of {report.floor_bytes / 1e6:.0f} MB")

    def _set_alarm(self, text: str | None) -> None:
        current = self.catalogue.status(ALARM_KEY)      # only the cleaner writes it
        if text is None and current is not None:
            log.warning("storage alarm cleared")
        elif text is not None and current is None:
            log.error("storage alarm: %s", text)
        if text != current:
            self.catalogue.set_status(ALARM_KEY, text)

    def alarm(self) -> str | None:
        """The current storage alarm, for the web UI and the technician's checks."""
        return self.catalogue.status(ALARM_KEY)

    def protected_alarm_since(self) -> str | None:
        """Since when calls kept for a contract or the law are all that is left to evict (the
        cleaner evicts them `protected_grace_hours` after that), or None."""
        return self.catalogue.status(PROTECTED_KEY)


def _clear_detail(db, reason: str | None) -> str | None:
    """A hold's or restriction's reason as its audit entry may name it: in a sealed store none
    (it is sealed in the call's row; an audit detail stays clear for the trail's chain)."""
    return reason if db.sealer is None else None
