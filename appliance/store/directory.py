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
    """The contacts of one catalogue."""

    def __init__(self, catalogue: Catalogue, country_code: str = "32"):
        self.catalogue = catalogue
        self.country_code = country_code

    def entries(self) -> list[Contact]:
        """Every contact, by name."""
        with self.catalogue.read() as db:
            rows = db.execute("SELECT number, name, company, note FROM contacts ORDER BY name COLLATE NOCASE, number")
            return [Contact(*row) for row in rows]

    def get(self, number: str) -> Contact | None:
        """The contact of `number` in any written form, or None (also when it is not a number)."""
        try:
            key = normalise(number, self.country_code)
        except ContactsError:
            return None
        with self.catalogue.read() as db:
            row = db.execute("SELECT number, name, company, note FROM contacts WHERE number = ?", [key]).fetchone()
        return None if row is None else Contact(*row)

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
            db.execute("INSERT INTO contacts (number, name, company, note, updated_at) VALUES (?, ?, ?, ?, ?)",
                       [contact.number, contact.name, contact.company, contact.note, iso_utc(time.time())])
            audit(db, actor, "contact-add", None, contact.number, address)

    def update(self, number: str, contact: Contact, actor: str, address: str | None = None) -> bool:
        """Replace the contact of `number` by `contact` (its number may change; audited); False
        when `number` has no contact, DuplicateContact when the new number has another one."""
        old = self.get(number)
        if old is None:
            return False
        with self.catalogue.transaction() as db:
            if contact.number != old.number:
                self._refuse_taken(db, contact.number)
            db.execute("UPDATE contacts SET number = ?, name = ?, company = ?, note = ?, updated_at = ? "
                       "WHERE number = ?", [contact.number, contact.name, contact.company, contact.note,
                                            iso_utc(time.time()), old.number])
            moved = f"{old.number} -> {contact.number}" if contact.number != old.number else old.number
            audit(db, actor, "contact-edit", None, moved, address)
        return True

    def delete(self, number: str, actor: str, address: str | None = None) -> bool:
        """Delete the contact of `number` (audited); False when it has none."""
        old = self.get(number)
        if old is None:
            return False
        with self.catalogue.transaction() as db:
            db.execute("DELETE FROM contacts WHERE number = ?", [old.number])
            audit(db, actor, "contact-delete", None, old.number, address)
        return True

    def import_checked(self, contacts: list[Contact], actor: str, what: str,
                       address: str | None = None) -> tuple[int, int]:
        """Merge contacts read by `read_csv` (audited as one import of `what`); (added, updated)."""
        with self.catalogue.transaction() as db:
            added, updated = import_contacts(db, contacts, self.country_code)
            audit(db, actor, "contact-import", None, f"{what}: {added} added, {updated} updated", address)
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

    @staticmethod
    def _refuse_taken(db, number: str) -> None:
        row = db.execute("SELECT name FROM contacts WHERE number = ?", [number]).fetchone()
        if row is not None:
            raise DuplicateContact("the number {number} is {name}'s already: edit that contact instead",
                                   number=number, name=row[0])
