"""A person's data in a sealed store: which fields are sealed, how a row is sealed when written and
opened when read, and the number tags that let a sealed catalogue find calls and contacts by number.

The recorder seals with the store's public key (`appliance.store.sealing.Sealer`) and can read
nothing back; times, lines, states, purposes, durations and hashes stay clear, so it keeps
recording, evicting and expiring while the store is locked. A tag is a keyed hash of the number in
its normalised form that only an unlocked reader can compute: the web fills in the tags of rows
written while it could not (`fill_tags`), and finds a number's calls by exact tag. In a store that
is not sealed nothing here changes a row.
"""

import logging

from appliance.contacts import ContactsError, normalise
from appliance.service import Service

log = logging.getLogger(__name__)

# The personal fields of a call row; each sealed under its column's name.
CALL_FIELDS = ("number", "contact_name", "notes", "hold_reason", "restrict_reason")
# The fields of a contact, sealed as "contact.<column>".
CONTACT_FIELDS = ("number", "name", "company", "note")
DIGIT_FIELD = "digit"               # a key heard in a call (the digits table)
TAG_BATCH = 500                     # rows tagged per write transaction: short, so the recorder never waits long
TAG_PAUSE_S = 0.02                  # between two batches: the recorder's writes go in between
TAG_POLL_S = 5.0                    # an idle tagger looks for the rows the recorder wrote since


def seal(sealer, value: str | None, field: str) -> str | None:
    """`value` as a store with `sealer` keeps it (as is when the store does not seal)."""
    return value if sealer is None else sealer.seal_field(value, field)


def sealed_call(sealer, fields: dict) -> dict:
    """Some fields of a call row as a store with `sealer` keeps them: the personal ones sealed, and
    a new number without a tag (the web tags it)."""
    if sealer is None:
        return fields
    sealed = {name: sealer.seal_field(value, name) if name in CALL_FIELDS else value
              for name, value in fields.items()}
    if "number" in fields:
        sealed["number_tag"] = None
    return sealed


def opened_call(opener, row: dict) -> dict:
    """A call row with its personal fields in the clear (`opener` None: a plain store's row)."""
    if opener is None:
        return row
    return {**row, **{name: opener.open_field(row[name], name) for name in CALL_FIELDS if name in row}}


def number_tag(opener, number: str | None, country_code: str = "32") -> str | None:
    """The tag of a number in any of its written forms (None for no number): computed over the
    number as `normalise` writes it, or as it came for a caller ID that is no number."""
    if not number:
        return None
    try:
        key = normalise(number, country_code)
    except ContactsError:
        key = number.strip()
    return opener.number_tag(key)


def fill_tags(catalogue, opener, country_code: str = "32", batch: int = TAG_BATCH) -> int:
    """Tag up to `batch` call rows whose number has none yet, in one short transaction of the
    catalogue's writer, and the contacts without a tag (those of a store sealed in place); return
    how many rows were tagged (0: none is left)."""
    rows = catalogue.untagged(batch)
    tags = [(number_tag(opener, opener.open_field(number, "number"), country_code), call_id, number)
            for call_id, number in rows]
    catalogue.set_number_tags(tags)
    with catalogue.read() as db:
        contacts = [row[0] for row in db.execute("SELECT number FROM contacts WHERE number_tag IS NULL LIMIT ?",
                                                 [batch])]
    if contacts:
        with catalogue.transaction() as db:
            db.executemany("UPDATE contacts SET number_tag = ? WHERE number = ?",
                           [(number_tag(opener, opener.open_field(number, "contact.number"), country_code), number)
                            for number in contacts])
    return len(tags) + len(contacts)


def seal_fields(catalogue, sealer, batch: int = TAG_BATCH) -> int:
    """Seal the personal fields a store kept clear before it was sealed (`callrec seal`): calls,
    keys and contacts, `batch` rows per transaction; a field sealed already is left as it is, so a
    run stopped midway is taken up again. The web tags the rows after its first unlock. Returns how
    many rows changed."""
    clear = " OR ".join(f"({name} IS NOT NULL AND substr({name}, 1, 7) != 'sealed:')" for name in CALL_FIELDS)
    steps = (("calls", "id", CALL_FIELDS, "{}", clear),
             ("digits", "id", ("key",), DIGIT_FIELD, "substr(key, 1, 7) != 'sealed:'"),
             ("contacts", "rowid", CONTACT_FIELDS, "contact.{}", "substr(number, 1, 7) != 'sealed:'"))
    changed = 0
    for table, key, columns, field, where in steps:
        while True:
            with catalogue.transaction() as db:
                rows = db.execute(f"SELECT {key}, {', '.join(columns)} FROM {table} WHERE {where} LIMIT ?",
                                  [batch]).fetchall()
                for row in rows:
                    values = [sealer.seal_field(value, field.format(column)) for column, value in zip(columns, row[1:])]
                    db.execute(f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in columns)} WHERE {key} = ?",
                               [*values, row[0]])
            changed += len(rows)
            if len(rows) < batch:
                break
    return changed


def fill_all_tags(catalogue, opener, country_code: str = "32") -> int:
    """Tag every call row that has a number and no tag; return how many were tagged."""
    total = 0
    while count := fill_tags(catalogue, opener, country_code):
        total += count
    return total


class NumberTagger(Service):
    """The web's thread that tags the calls the recorder writes (it cannot: it has no secret), in
    short batches through the web's catalogue connection, from the first unlock on."""

    def __init__(self, catalogue, opener, country_code: str = "32"):
        super().__init__("number-tags")
        self.catalogue, self.opener, self.country_code = catalogue, opener, country_code

    def serve(self) -> None:
        while True:
            try:
                tagged = fill_tags(self.catalogue, self.opener, self.country_code)
            except Exception:
                # A catalogue that refuses for now, or a row that cannot be opened: tried again later.
                log.exception("cannot tag the calls' numbers")
                tagged = 0
            if self.wait(TAG_PAUSE_S if tagged else TAG_POLL_S):
                return
