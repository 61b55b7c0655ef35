"""The contacts directory: names for the numbers that call, imported from a CSV file.

Numbers are stored and compared in one normalised form (see `normalise`), so "02 555 12 34" in
the file finds a caller ID sent as "+3225551234". The table lives in whatever SQLite database the
caller gives; the functions that write take part in the caller's transaction (see
`import_contacts`). Erasing a customer (see `appliance.store.erasure`) removes their contact too.
"""

import codecs
import csv
import io
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from appliance.clock import iso_utc
from appliance.errors import CallrecError

REQUIRED_COLUMNS = ("number", "name")
OPTIONAL_COLUMNS = ("company", "note")
MAX_DIGITS = 15         # E.164's longest number, country code included
MAX_LISTED_PROBLEMS = 20

_SEPARATORS = re.compile(r"[\s.\-/]")
_DIGITS = re.compile(r"[0-9]+")   # not \d: it takes other scripts' digits too
_COUNTRY_CODE = re.compile(r"\+?([1-9][0-9]{0,2})")


class ContactsError(CallrecError, ValueError):
    """A contacts file or a phone number cannot be used."""


@dataclass(frozen=True)
class Contact:
    """One entry of the directory. `number` is normalised; `company` and `note` may be None."""

    number: str
    name: str
    company: str | None = None
    note: str | None = None


def normalise(number: str, country_code: str = "32") -> str:
    """The form numbers are compared in: "+" then the country code and the national number,
    digits only (E.164-like), e.g. "+3225551234".

    The rule, in order:

    1. Spaces (any Unicode space), dots, dashes, slashes and parentheses are removed; so is a
       "(0)" written after an international prefix, as in "+32 (0)2 555 12 34".
    2. A number starting with "+" is kept as it is; one starting with "00" (the international
       prefix of Europe and most of the world) has it replaced by "+".
    3. Otherwise a number starting with a single "0" is a national number: the 0 (the trunk
       prefix) is replaced by "+<country_code>".
    4. Anything else (a short or internal number such as "112" or "2345", or an international
       number written without "+" or "00") is returned as its digits, without "+": it only
       matches itself written the same way.

    Limits: the rule assumes the trunk prefix is "0" and the international prefix "00". That is
    right for Belgium, France, the Netherlands, Germany, the UK, Switzerland and most of Europe,
    not for the North American plan (trunk "1", international "011"), Russia ("8"), Hungary
    ("06"), or for countries without a trunk prefix (Poland, Spain, Italy, Denmark, Norway,
    Portugal...), whose national numbers fall under step 4 and need "+" in the contacts file.
    Italian numbers keep their leading 0 after "+39": write them with "+39" too. The number is
    not checked against any numbering plan, only that it has 1 to 15 digits.

    Raises ContactsError when `number` holds anything but digits, those separators and one
    leading "+", or when it has no digits or more than 15.
    """
    compact = _SEPARATORS.sub("", number)
    if compact.startswith(("+", "00")):
        compact = compact.replace("(0)", "")
    compact = compact.replace("(", "").replace(")", "")
    if compact.startswith("+"):
        result = "+" + compact[1:]
    elif compact.startswith("00"):
        result = "+" + compact[2:]
    elif compact.startswith("0") and len(compact) > 1:
        result = "+" + _country_code(country_code) + compact[1:]
    else:
        result = compact
    digits = result.removeprefix("+")
    if not _DIGITS.fullmatch(digits):
        raise ContactsError(f"{number!r} is not a phone number: expected digits, optionally "
                            f"'+' first, with spaces, dots, dashes, slashes or parentheses between")
    if len(digits) > MAX_DIGITS:
        raise ContactsError(f"{number!r} is not a phone number: more than {MAX_DIGITS} digits")
    return result


def written_forms(number: str, country_code: str = "32") -> list[str]:
    """The ways one number may have been written by the product or typed by a user: as given,
    normalised ("+32…"), without "+", with the international prefix ("0032…") and national
    ("0…")."""
    forms = {number.strip()}
    try:
        canonical = normalise(number, country_code)
    except ContactsError:
        return sorted(forms)
    forms |= {canonical, canonical.lstrip("+")}
    if canonical.startswith("+"):
        forms.add("00" + canonical[1:])
        if canonical.startswith("+" + country_code):
            forms.add("0" + canonical[1 + len(country_code):])
    return sorted(form for form in forms if form)


def _country_code(code: str) -> str:
    match = _COUNTRY_CODE.fullmatch(code.strip())
    if match is None:
        raise ContactsError(f"country code {code!r}: expected 1 to 3 digits, such as 32 for Belgium")
    return match.group(1)


def read_csv(path: Path | str, country_code: str = "32") -> list[Contact]:
    """The contacts of a CSV file, numbers normalised with `country_code` (see `normalise`).

    The first row names the columns: `number` and `name` are required, `company` and `note`
    optional, in any order and case; other columns are ignored. The delimiter is `;` if the
    header row has more semicolons than commas, else `,` (spreadsheets in Belgium and France save
    "CSV" with semicolons). The file is UTF-8, with or without a byte order mark. Blank rows are
    skipped; empty company or note cells give None.

    Every row is checked before anything is returned: a missing number or name, a number that is
    not one, a number given twice (once normalised), a row with more cells than the header. One
    ContactsError lists the file and every bad row's line number with its problem, so a technician
    fixes them in one go; nothing is returned, so nothing can be half imported.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ContactsError(f"cannot read the contacts file {path}: {exc.strerror or exc}") from None
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ContactsError(f"{path}, line {line}: not UTF-8 text; save the file as \"CSV UTF-8\" "
                            f"(Excel's plain \"CSV\" is in the computer's local encoding)") from None
    header_line = text.split("\n", 1)[0]
    delimiter = ";" if header_line.count(";") > header_line.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    contacts, problems, first_seen = [], [], {}
    line = 1
    try:
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise ContactsError(f"{path}: empty; expected a header row with the columns "
                                f"number{delimiter}name")
        columns = _columns(path, header)
        while True:
            line = reader.line_num + 1      # where the next row begins: a quoted cell may go on
            row = next(reader, None)
            if row is None:
                break
            if not any(cell.strip() for cell in row):
                continue
            try:
                contact = _contact(row, columns, len(header), country_code)
            except ContactsError as exc:
                problems.append(f"line {line}: {exc}")
                continue
            if contact.number in first_seen:
                problems.append(f"line {line}: the number {contact.number} is already on line "
                                f"{first_seen[contact.number]}")
                continue
            first_seen[contact.number] = line
            contacts.append(contact)
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            problems.append(f"line {line}: a double quote opens a cell that is never closed")
        else:
            problems.append(f"line {line}: {exc}")
    if problems:
        listed = problems[:MAX_LISTED_PROBLEMS]
        if len(problems) > len(listed):
            listed.append(f"and {len(problems) - len(listed)} more")
        raise ContactsError(f"{path}: nothing imported, {len(problems)} bad "
                            f"row{'s' if len(problems) > 1 else ''}:\n  " + "\n  ".join(listed))
    return contacts


def _columns(path: Path, header: list[str]) -> dict[str, int]:
    """Where each known column is in the header row."""
    names = [cell.strip().lower() for cell in header]
    columns = {}
    for index, name in enumerate(names):
        if name in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
            if name in columns:
                raise ContactsError(f"{path}, line 1: the column {name!r} appears twice")
            columns[name] = index
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise ContactsError(f"{path}, line 1: no column {' or '.join(map(repr, missing))}; the "
                            f"header row must name the columns number and name (company and "
                            f"note are optional), it has: {', '.join(map(repr, header))}")
    return columns


def _contact(row: list[str], columns: dict[str, int], width: int, country_code: str) -> Contact:
    """One data row as a Contact; raises ContactsError saying what is wrong with it."""
    if len(row) > width:
        raise ContactsError(f"{len(row)} cells where the header has {width}; put a cell that "
                            f"holds the delimiter in double quotes")

    def cell(name: str) -> str | None:
        index = columns.get(name)
        value = row[index].strip() if index is not None and index < len(row) else ""
        return value or None

    number, name = cell("number"), cell("name")
    if number is None:
        raise ContactsError("the number is empty")
    if name is None:
        raise ContactsError(f"the name of {number} is empty")
    return Contact(normalise(number, country_code), name, cell("company"), cell("note"))


def ensure_schema(db: sqlite3.Connection) -> None:
    """Create the contacts table if the database has none (safe to call at every start, or from a
    schema migration)."""
    db.execute("""CREATE TABLE IF NOT EXISTS contacts (
        number TEXT PRIMARY KEY, name TEXT NOT NULL, company TEXT, note TEXT,
        updated_at TEXT NOT NULL)""")


def import_contacts(db: sqlite3.Connection, contacts: list[Contact],
                    country_code: str = "32") -> tuple[int, int]:
    """Add the contacts that are new and update those whose name, company or note changed;
    return (added, updated). Contacts already identical count in neither, and contacts missing
    from `contacts` are kept: an import merges, it never deletes.

    Runs inside the caller's transaction and neither begins nor commits one, so the import and
    whatever goes with it (an audit entry) are one unit: open it first, `BEGIN IMMEDIATE` on an
    autocommit connection as the catalogue's (`Catalogue.transaction()`), or `with db:` on a
    connection in Python's default mode. On an autocommit connection with no transaction open it
    raises ContactsError rather than commit each row by itself. Numbers are normalised again with
    `country_code`, which leaves those of `read_csv` unchanged.
    """
    if db.isolation_level is None and not db.in_transaction:
        raise ContactsError("import_contacts needs a transaction: open one first "
                            "(BEGIN IMMEDIATE), so that a failed import leaves nothing behind")
    now = iso_utc(time.time())
    added = updated = 0
    seen = set()
    for contact in contacts:
        number = normalise(contact.number, country_code)
        if number in seen:
            raise ContactsError(f"the number {number} is given twice; nothing imported")
        seen.add(number)
        fields = [contact.name, contact.company, contact.note]
        old = db.execute("SELECT name, company, note FROM contacts WHERE number = ?",
                         [number]).fetchone()
        if old is None:
            db.execute("INSERT INTO contacts (number, name, company, note, updated_at) "
                       "VALUES (?, ?, ?, ?, ?)", [number, *fields, now])
            added += 1
        elif list(old) != fields:
            db.execute("UPDATE contacts SET name = ?, company = ?, note = ?, updated_at = ? "
                       "WHERE number = ?", [*fields, now, number])
            updated += 1
    return added, updated


def lookup(db: sqlite3.Connection, number: str | None, country_code: str = "32") -> Contact | None:
    """The contact for a number in any of the forms `normalise` understands, or None (also for
    None, or for a number such as a withheld caller ID's placeholder that is not one)."""
    if not number:
        return None
    try:
        key = normalise(number, country_code)
    except ContactsError:
        return None
    row = db.execute("SELECT number, name, company, note FROM contacts WHERE number = ?",
                     [key]).fetchone()
    return None if row is None else Contact(*row)


def remove(db: sqlite3.Connection, number: str, country_code: str = "32") -> bool:
    """Delete the contact of a number (for a data subject who asks for it); True if there was
    one. Like `import_contacts`, it runs in the caller's transaction."""
    key = normalise(number, country_code)
    return db.execute("DELETE FROM contacts WHERE number = ?", [key]).rowcount > 0
