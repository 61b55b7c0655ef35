"""Erasing a person (GDPR Art. 17): every call of their number and every trace of the number the
product wrote anywhere else.

In one transaction: the calls (rows, keys, pauses, waveforms; their recordings and quarantined
spools just after, and their copies on the offload target by the offloader), the number's contact,
the webhook events waiting in the outbox that name it, and the number and the contact's name
wherever they were written into audit details or into other calls' notes and hold reasons. A call
on hold or being recorded is kept and said so.

What remains is what the shop must be able to show: a tombstone and an `erased` ledger entry per
call, and one `erasure` entry in the ledger and the audit naming the request's reference and the
number's keyed hash (`appliance.store.subjects`). Whoever holds the box can later check that a number given
to them was erased, and when; nobody can read the number back from it.
"""

import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from appliance.contacts import written_forms
from appliance.errors import CallrecError
from appliance.store import ledger
from appliance.store.archive import QUARANTINE_DIR
from appliance.store.catalogue import SEND_AGAIN, CallFilter, audit
from appliance.store.outbox import Outbox
from appliance.store.personal import fill_all_tags, number_tag, opened_call
from appliance.store.retention import Store
from appliance.store.subjects import subject_hash, subject_key

# Shorter numbers (an extension, "112") and names ("Jan") are not looked for in free texts:
# they would be found inside other words and numbers ("January", "call 1123").
MIN_REDACTED = 5


@dataclass
class ErasureReport:
    """What one erasure did: its reference, the calls erased and those kept (with why)."""

    reference: str
    subject: str                        # the number's keyed hash
    erased: list[int] = field(default_factory=list)
    held: list[dict] = field(default_factory=list)          # kept: on hold
    recording: list[int] = field(default_factory=list)      # kept: still being recorded
    contact_removed: bool = False
    events_dropped: int = 0
    texts_redacted: int = 0
    log_emptied: bool = True            # False: the old rows wait in the write-ahead log a while


def new_reference(now: float | None = None) -> str:
    """A request reference to give the customer, e.g. `E-20261205-3f9a1c`."""
    day = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc).strftime("%Y%m%d")
    return f"E-{day}-{secrets.token_hex(3)}"


def erase_subject(store: Store, number: str, actor: str, address: str | None = None,
                  country_code: str = "32", opener=None) -> ErasureReport:
    """Erase the person behind `number` (see the module's docstring). Raises CallrecError when
    the number is empty. A sealed store needs its `opener` (the web's, once unlocked): its calls
    are found by number tag, every row tagged first."""
    if not number.strip():
        raise CallrecError("give the number to erase")
    catalogue = store.catalogue
    sealed = catalogue.db.sealer is not None
    if sealed and opener is None:
        raise CallrecError("the store is sealed: erase in the web UI, which opens it at a login")
    forms = written_forms(number, country_code)
    tag = number_tag(opener, number, country_code) if sealed else None
    if sealed:
        fill_all_tags(catalogue, opener, country_code)
    report = ErasureReport(new_reference(), subject_hash(subject_key(store.data_dir, opener), number, country_code))
    record = f"reference {report.reference}, subject {report.subject}"
    which = CallFilter(tags=(tag,)) if sealed else CallFilter(numbers=tuple(forms))
    contact = ("number_tag = ?", [tag]) if sealed else (f"number IN ({', '.join('?' * len(forms))})", forms)
    with catalogue.transaction() as db:
        calls = [opened_call(opener, call) for call in catalogue.find_calls(which)]
        erasable = []
        for call in calls:
            if call["held"]:
                report.held.append({"id": call["id"], "reason": call["hold_reason"]})
            elif call["state"] == "recording":
                report.recording.append(call["id"])
            else:
                erasable.append(call)
        names = {row[0] for row in db.execute(f"SELECT name FROM contacts WHERE {contact[0]}", contact[1])}
        names = {opener.open_field(name, "contact.name") if sealed else name for name in names}
        names |= {call["contact_name"] for call in erasable if call["contact_name"]}
        ledger.record(db, "erasure", None, None, record)
        audit(db, actor, "erasure", None, f"{record}, {len(erasable)} call(s)", address)
        if erasable:
            store.delete_rows(db, erasable, "erased", actor, f"reference {report.reference}", address)
        report.erased = [call["id"] for call in erasable]
        report.contact_removed = db.execute(f"DELETE FROM contacts WHERE {contact[0]}", contact[1]).rowcount > 0
        report.events_dropped = Outbox.forget(db, forms)
        redacted = f"[erased: {report.reference}]"
        # Longest first: a shorter form may be part of a longer one ("3225…" of "+3225…").
        texts = [text for text in sorted({*forms, *names}, key=len, reverse=True) if len(text) >= MIN_REDACTED]
        for text in texts:
            report.texts_redacted += _redact(db, text, redacted)
        if sealed:
            report.texts_redacted += _redact_sealed(db, opener, texts, redacted)
    store.finish_deletions()
    for call_id in report.erased:
        for spool in (store.data_dir / QUARANTINE_DIR).glob(f"{call_id}-*"):
            spool.unlink(missing_ok=True)
    report.log_emptied = catalogue.checkpoint()
    return report


# The free texts that may name a person: column, table.
FREE_TEXTS = (("detail", "audit"), ("notes", "calls"), ("hold_reason", "calls"))
SEALED_TEXTS = ("notes", "hold_reason", "restrict_reason")


def _redact(db, text: str, replacement: str) -> int:
    """Replace `text` in every free text; return how many texts changed. A call whose copy on
    the offload target carries the old text in its manifest is copied again."""
    changed = 0
    for column, table in FREE_TEXTS:
        if table == "calls":
            db.execute(f"UPDATE calls SET {SEND_AGAIN} WHERE offloaded_at IS NOT NULL AND instr({column}, ?) > 0",
                       [text])
        changed += db.execute(f"UPDATE {table} SET {column} = REPLACE({column}, ?, ?) WHERE instr({column}, ?) > 0",
                              [text, replacement, text]).rowcount
    return changed


def _redact_sealed(db, opener, texts: list[str], replacement: str) -> int:
    """`_redact` for the sealed free texts of the calls: each is opened, and sealed again if it
    changed (SQL cannot look into them); return how many texts changed."""
    changed = 0
    for column in SEALED_TEXTS:
        rows = db.execute(f"SELECT id, {column} FROM calls WHERE {column} IS NOT NULL").fetchall()
        for call_id, stored in rows:
            value = old = opener.open_field(stored, column)
            for text in texts:
                value = value.replace(text, replacement)
            if value != old:
                db.execute(f"UPDATE calls SET {column} = ?, {SEND_AGAIN} WHERE id = ?",
                           [db.sealer.seal_field(value, column), call_id])
                changed += 1
    return changed
