"""The contacts directory as people change it: one contact added, edited or deleted, a CSV file
imported, the whole directory written as a CSV file that `appliance.contacts.read_csv` reads back.

Every change is checked first (a number `appliance.contacts.normalise` takes, a name, no number
twice) and made in one catalogue transaction with its audit entry, so a refused change leaves
nothing behind. The audit entry names the normalised number: an erasure of the person
(`appliance.store.erasure`) deletes their contact and redacts the number from the trail.
"""

import csv
import io
import time

from appliance.clock import iso_utc
from appliance.contacts import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, Contact, ContactsError, import_contacts, normalise
from appliance.errors import CallrecError
from appliance.store.catalogue import Catalogue, audit
from appliance.store.personal import CONTACT_FIELDS, number_tag, seal

MAX_NAME = 200
MAX_TEXT = 500
COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS


class ContactError(CallrecError):
    """A contact change that cannot be made; the message says why."""


class DuplicateContact(ContactError):
    """The number belongs to another contact already."""


def inert_cell(value):
    """A cell a spreadsheet shows as text: a leading = + - @ would make it a formula (a name or a
    reason typed as `=HYPERLINK(…)`, say)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


class Directory:
    """The contacts of one catalogue. In a sealed store every field of a contact is sealed and a
    contact is found by its number's tag: reading and changing it needs the store's `opener`."""

    def __init__(self, catalogue: Catalogue, country_code: str = "32", opener=None):
        self.catalogue = catalogue
        self.country_code = country_code
        self.opener = opener
        self.sealed = catalogue.db.sealer is not None

    def _where(self, number: str) -> tuple[str, str]:
        """The condition that finds a normalised number's contact, and its parameter."""
        if self.sealed and self.opener is None:
            raise ContactError("the store is sealed: change the contacts in the web UI, which opens it at a login")
        if self.sealed:
            return "number_tag = ?", number_tag(self.opener, number, self.country_code)
        return "number = ?", number

    def _contact(self, row) -> Contact:
        if not self.sealed:
            return Contact(*row)
        return Contact(*(self.opener.open_field(value, f"contact.{column}")
                         for column, value in zip(CONTACT_FIELDS, row)))

    def _stored(self, contact: Contact) -> list:
        """number, name, company, note and number_tag as the table keeps them."""
        if not self.sealed:
            return [contact.number, contact.name, contact.company, contact.note, None]
        sealer = self.catalogue.db.sealer
        return [seal(sealer, getattr(contact, column), f"contact.{column}") for column in CONTACT_FIELDS] + \
            [number_tag(self.opener, contact.number, self.country_code)]

    def _detail(self, number: str) -> str:
        """How an audit entry names a contact's number: in a sealed store by its tag only."""
        return f"tag {number_tag(self.opener, number, self.country_code)[:12]}" if self.sealed else number

    def entries(self) -> list[Contact]:
        """Every contact, by name."""
        with self.catalogue.read() as db:
            rows = db.execute("SELECT number, name, company, note FROM contacts ORDER BY name COLLATE NOCASE, number")
            contacts = [self._contact(row) for row in rows]
        if self.sealed:
            contacts.sort(key=lambda contact: (contact.name.casefold(), contact.number))
        return contacts

    def get(self, number: str) -> Contact | None:
        """The contact of `number` in any written form, or None (also when it is not a number)."""
        try:
            key = normalise(number, self.country_code)
        except ContactsError:
            return None
        where, value = self._where(key)
        with self.catalogue.read() as db:
            row = db.execute(f"SELECT number, name, company, note FROM contacts WHERE {where}", [value]).fetchone()
        return None if row is None else self._contact(row)

    def names(self, tags: list[str]) -> dict[str, str]:
        """The contacts' names of these number tags, by tag (a sealed store's naming of callers)."""
        with self.catalogue.read() as db:
            rows = db.execute(f"SELECT number_tag, name FROM contacts WHERE number_tag IN ({', '.join('?' * len(tags))})",
                              tags).fetchall()
        return {tag: self.opener.open_field(name, "contact.name") for tag, name in rows}

    def checked(self, number, name, company=None, note=None) -> Contact:
        """A contact from what a person typed, or ContactError saying what is wrong."""
        if not isinstance(number, str) or not number.strip():
            raise ContactError("give the contact's phone number")
        try:
            key = normalise(number.strip(), self.country_code)
        except ContactsError:
            raise ContactError("{number} is not a phone number: digits, optionally + first, with spaces, dots, "
                               "dashes, slashes or parentheses between", number=number.strip()) from None
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_NAME:
            raise ContactError("a name is 1 to {n} characters", n=MAX_NAME)
        texts = [value.strip() or None if isinstance(value, str) else value for value in (company, note)]
        if any(value is not None and (not isinstance(value, str) or len(value) > MAX_TEXT) for value in texts):
            raise ContactError("a company or a note is at most {n} characters", n=MAX_TEXT)
        return Contact(key, name.strip(), *texts)

    def add(self, contact: Contact, actor: str, address: str | None = None) -> None:
        """Add a contact checked by `checked` (audited); DuplicateContact if its number has one."""
        with self.catalogue.transaction() as db:
            self._refuse_taken(db, contact.number)
            db.execute("INSERT INTO contacts (number, name, company, note, number_tag, updated_at) "
                       "VALUES (?, ?, ?, ?, ?, ?)", [*self._stored(contact), iso_utc(time.time())])
            audit(db, actor, "contact-add", None, self._detail(contact.number), address)

    def update(self, number: str, contact: Contact, actor: str, address: str | None = None) -> bool:
        """Replace the contact of `number` by `contact` (its number may change; audited); False
        when `number` has no contact, DuplicateContact when the new number has another one."""
        old = self.get(number)
        if old is None:
            return False
        with self.catalogue.transaction() as db:
            if contact.number != old.number:
                self._refuse_taken(db, contact.number)
            where, value = self._where(old.number)
            db.execute(f"UPDATE contacts SET number = ?, name = ?, company = ?, note = ?, number_tag = ?, "
                       f"updated_at = ? WHERE {where}", [*self._stored(contact), iso_utc(time.time()), value])
            moved = (f"{self._detail(old.number)} -> {self._detail(contact.number)}"
                     if contact.number != old.number else self._detail(old.number))
            audit(db, actor, "contact-edit", None, moved, address)
        return True

    def delete(self, number: str, actor: str, address: str | None = None) -> bool:
        """Delete the contact of `number` (audited); False when it has none."""
        old = self.get(number)
        if old is None:
            return False
        with self.catalogue.transaction() as db:
            where, value = self._where(old.number)
            db.execute(f"DELETE FROM contacts WHERE {where}", [value])
            audit(db, actor, "contact-delete", None, self._detail(old.number), address)
        return True

    def import_checked(self, contacts: list[Contact], actor: str, what: str,
                       address: str | None = None) -> tuple[int, int]:
        """Merge contacts read by `read_csv` (audited as one import of `what`); (added, updated)."""
        with self.catalogue.transaction() as db:
            if self.sealed:
                added, updated = self._import_sealed(db, contacts)
            else:
                added, updated = import_contacts(db, contacts, self.country_code)
            audit(db, actor, "contact-import", None, f"{what}: {added} added, {updated} updated", address)
        return added, updated

    def _import_sealed(self, db, contacts: list[Contact]) -> tuple[int, int]:
        """`import_contacts` for a sealed store: each contact found by its tag, compared opened."""
        added = updated = 0
        seen = set()
        for contact in contacts:
            contact = Contact(normalise(contact.number, self.country_code), contact.name, contact.company, contact.note)
            if contact.number in seen:
                raise ContactsError(f"the number {contact.number} is given twice; nothing imported")
            seen.add(contact.number)
            where, value = self._where(contact.number)
            row = db.execute(f"SELECT number, name, company, note FROM contacts WHERE {where}", [value]).fetchone()
            if row is None:
                db.execute("INSERT INTO contacts (number, name, company, note, number_tag, updated_at) "
                           "VALUES (?, ?, ?, ?, ?, ?)", [*self._stored(contact), iso_utc(time.time())])
                added += 1
            elif self._contact(row) != contact:
                db.execute(f"UPDATE contacts SET number = ?, name = ?, company = ?, note = ?, number_tag = ?, "
                           f"updated_at = ? WHERE {where}", [*self._stored(contact), iso_utc(time.time()), value])
                updated += 1
        return added, updated

    @staticmethod
    def csv_text(contacts: list[Contact]) -> str:
        """`contacts` (see `entries`) as a CSV file with the columns `read_csv` reads; text cells
        that a spreadsheet would take for a formula start with a quote."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for contact in contacts:
            writer.writerow([contact.number, *(inert_cell(value or "") for value in
                                               (contact.name, contact.company, contact.note))])
        return out.getvalue()

    def _refuse_taken(self, db, number: str) -> None:
        where, value = self._where(number)
        row = db.execute(f"SELECT name FROM contacts WHERE {where}", [value]).fetchone()
        if row is not None:
            name = self.opener.open_field(row[0], "contact.name") if self.sealed else row[0]
            raise DuplicateContact("the number {number} is {name}'s already: edit that contact instead",
                                   number=number, name=name)
