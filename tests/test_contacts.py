"""The contacts directory: number normalisation, CSV import, storage and lookup in SQLite."""

import sqlite3

import pytest

from appliance.store.catalogue import Catalogue
from appliance.contacts import (Contact, ContactsError, ensure_schema, import_contacts, lookup,
                                normalise, read_csv, remove)
from appliance.errors import CallrecError

BOM = "\ufeff"


@pytest.mark.parametrize("number, country_code, expected", [
    # Belgium (the default country code)
    ("02 555 12 34", "32", "+3225551234"),
    ("02/555.12.34", "32", "+3225551234"),
    ("(02) 555-12-34", "32", "+3225551234"),
    ("0475 12 34 56", "32", "+32475123456"),
    ("+32 2 555 12 34", "32", "+3225551234"),
    ("+32 (0)2 555 12 34", "32", "+3225551234"),
    ("0032 2 555 12 34", "32", "+3225551234"),
    ("0032 (0)475 12.34.56", "32", "+32475123456"),
    ("\u00a0+32\u00a0475\u00a012\u00a034\u00a056 ", "32", "+32475123456"),   # from a spreadsheet
    # France
    ("+33 1 42 68 53 00", "32", "+33142685300"),
    ("0033 1 42 68 53 00", "32", "+33142685300"),
    ("01.42.68.53.00", "33", "+33142685300"),
    ("06-12-34-56-78", "33", "+33612345678"),
    # The Netherlands
    ("+31 20 624 1111", "32", "+31206241111"),
    ("0031 (0)20 624 1111", "32", "+31206241111"),
    ("020-624 1111", "31", "+31206241111"),
    # Poland: no trunk 0, so a national number stays as it is (documented limit)
    ("+48 22 123 45 67", "32", "+48221234567"),
    ("0048 (22) 123-45-67", "32", "+48221234567"),
    ("22 123 45 67", "48", "221234567"),
    # short numbers match only themselves
    ("112", "32", "112"),
    ("+3225551234", "+32", "+3225551234"),
])
def test_normalise(number, country_code, expected):
    assert normalise(number, country_code) == expected
    assert normalise(expected, country_code) == expected    # normalising twice changes nothing


@pytest.mark.parametrize("number", ["", "   ", "+", "00", "abc", "02 555 12 3x", "++32 2 555",
                                    "+32 2 555 12 34 ext 5", "+1234567890123456", "٠٢٥٥٥"])
def test_normalise_refuses_what_is_not_a_number(number):
    with pytest.raises(ContactsError, match="is not a phone number"):
        normalise(number)


def test_normalise_refuses_a_bad_country_code():
    with pytest.raises(ContactsError, match="country code 'BE'"):
        normalise("02 555 12 34", "BE")


def write(tmp_path, text, name="contacts.csv"):
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def test_read_csv_with_semicolons_and_a_bom(tmp_path):
    path = write(tmp_path, BOM + "Name;Number;Company;Note\r\n"
                              "Jean Dupont;02/555.12.34;Dupont & Fils;\r\n"
                              "\r\n"
                              "\"Müller; Anna\";+49 30 1234567;;\"call back\nafter 5\"\r\n"
                              "Élodie;0475 12 34 56\r\n")
    assert read_csv(path) == [
        Contact("+3225551234", "Jean Dupont", "Dupont & Fils", None),
        Contact("+49301234567", "Müller; Anna", None, "call back\nafter 5"),
        Contact("+32475123456", "Élodie", None, None),
    ]


def test_read_csv_with_commas_extra_columns_and_a_country_code(tmp_path):
    path = write(tmp_path, "number,name,email\n01 42 68 53 00,Café de Flore,flore@example.fr\n")
    assert read_csv(path, country_code="33") == [Contact("+33142685300", "Café de Flore")]


def test_bad_rows_are_named_by_line_and_nothing_is_imported(tmp_path):
    catalogue = Catalogue(tmp_path)
    ensure_schema(catalogue.db)
    path = write(tmp_path, "number;name\n"
                           "02 555 12 34;Jean\n"
                           "02 555 12 3x;Paul\n"
                           "0475 12 34 56;\n"
                           "+32 2 555 12 34;Jean again\n"
                           "0476 00 00 00;Ann;extra\n")
    with pytest.raises(ContactsError) as error:
        with catalogue.transaction() as db:
            import_contacts(db, read_csv(path))
    message = str(error.value)
    assert str(path) in message and "nothing imported, 4 bad rows" in message
    assert "line 3: '02 555 12 3x' is not a phone number" in message
    assert "line 4: the name of 0475 12 34 56 is empty" in message
    assert "line 5: the number +3225551234 is already on line 2" in message
    assert "line 6: 3 cells where the header has 2" in message
    assert isinstance(error.value, CallrecError) and isinstance(error.value, ValueError)
    assert catalogue.db.execute("SELECT COUNT(*) FROM contacts").fetchone()[0] == 0
    catalogue.close()


@pytest.mark.parametrize("text, problem", [
    ("", "empty; expected a header row"),
    ("name;phone\nJean;02 555 12 34\n", "line 1: no column 'number'"),
    ("number;name;Name\n", "line 1: the column 'name' appears twice"),
    ('number,name\n"02 555 12 34,Jean\n', "line 2: a double quote opens a cell that is never closed"),
])
def test_unusable_files_are_explained(tmp_path, text, problem):
    with pytest.raises(ContactsError, match=problem):
        read_csv(write(tmp_path, text))


def test_a_file_not_in_utf8_names_the_line(tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_bytes("number;name\n02 555 12 34;Jean\n0475 12 34 56;Hélène\n".encode("cp1252"))
    with pytest.raises(ContactsError, match=r"line 3: not UTF-8 text"):
        read_csv(path)
    with pytest.raises(ContactsError, match="cannot read the contacts file"):
        read_csv(tmp_path / "missing.csv")


def test_a_failed_import_leaves_nothing_behind(tmp_path):
    catalogue = Catalogue(tmp_path)
    ensure_schema(catalogue.db)
    with pytest.raises(ContactsError):
        with catalogue.transaction() as db:
            import_contacts(db, [Contact("+3225551234", "Jean"), Contact("not one", "Paul")])
    assert catalogue.db.execute("SELECT COUNT(*) FROM contacts").fetchone()[0] == 0
    catalogue.close()


def test_reimport_updates_a_name_and_keeps_the_others(tmp_path):
    catalogue = Catalogue(tmp_path)
    ensure_schema(catalogue.db)
    ensure_schema(catalogue.db)     # again at the next start: harmless
    first = write(tmp_path, "number;name;company\n"
                            "02 555 12 34;Jean Dupont;Dupont & Fils\n"
                            "0475 12 34 56;Élodie;\n"
                            "+33 1 42 68 53 00;Café de Flore;\n", "first.csv")
    second = write(tmp_path, "number;name;company\n"
                             "+32 2 555 12 34;Jean-Marie Dupont;Dupont & Fils\n"
                             "0475/12.34.56;Élodie;\n"
                             "0032 9 123 45 67;Garage Vermeulen;\n", "second.csv")
    with catalogue.transaction() as db:
        assert import_contacts(db, read_csv(first)) == (3, 0)
    stamp = catalogue.db.execute(
        "SELECT updated_at FROM contacts WHERE number = '+32475123456'").fetchone()[0]
    with catalogue.transaction() as db:
        assert import_contacts(db, read_csv(second)) == (1, 1)
    assert lookup(catalogue.db, "02 555 12 34").name == "Jean-Marie Dupont"
    assert lookup(catalogue.db, "+33 1 42 68 53 00").name == "Café de Flore"    # kept
    assert catalogue.db.execute(
        "SELECT updated_at FROM contacts WHERE number = '+32475123456'").fetchone()[0] == stamp
    catalogue.close()


def test_lookup_by_a_differently_formatted_number(tmp_path):
    catalogue = Catalogue(tmp_path)
    ensure_schema(catalogue.db)
    with catalogue.transaction() as db:
        import_contacts(db, read_csv(write(tmp_path, "number,name,company,note\n"
                                                     "02/555.12.34,Jean,Dupont & Fils,prefers French\n")))
    expected = Contact("+3225551234", "Jean", "Dupont & Fils", "prefers French")
    for number in ("+3225551234", "003225551234", "025551234", "+32 (0)2 555 12 34"):
        assert lookup(catalogue.db, number) == expected
    assert lookup(catalogue.db, "+3225551235") is None
    assert lookup(catalogue.db, "025551234", country_code="33") is None
    for not_a_number in (None, "", "P", "private"):
        assert lookup(catalogue.db, not_a_number) is None
    catalogue.close()


def test_import_needs_a_transaction_on_an_autocommit_connection(tmp_path):
    db = sqlite3.connect(tmp_path / "c.db", isolation_level=None)
    ensure_schema(db)
    with pytest.raises(ContactsError, match="needs a transaction"):
        import_contacts(db, [Contact("+3225551234", "Jean")])
    assert db.execute("SELECT COUNT(*) FROM contacts").fetchone()[0] == 0
    db.close()


def test_import_in_pythons_default_transaction_mode(tmp_path):
    db = sqlite3.connect(tmp_path / "c.db")
    ensure_schema(db)
    with db:
        assert import_contacts(db, [Contact("02 555 12 34", "Jean")]) == (1, 0)
    with db:
        assert import_contacts(db, [Contact("+3225551234", "Jean")]) == (0, 0)   # unchanged
    assert lookup(db, "025551234") == Contact("+3225551234", "Jean")
    with pytest.raises(ContactsError, match="given twice"):
        with db:
            import_contacts(db, [Contact("+3247", "A"), Contact("047", "B")])
    db.close()


def test_remove_deletes_only_when_asked(tmp_path):
    db = sqlite3.connect(tmp_path / "c.db")
    ensure_schema(db)
    with db:
        import_contacts(db, [Contact("+3225551234", "Jean"), Contact("+32475123456", "Élodie")])
    with db:
        assert remove(db, "02 555 12 34")
        assert not remove(db, "02 555 12 34")
    assert lookup(db, "+3225551234") is None
    assert lookup(db, "0475 12 34 56").name == "Élodie"
    db.close()


def test_line_numbers_count_the_lines_a_quoted_cell_spans(tmp_path):
    path = write(tmp_path, 'number,name,note\n02 555 12 34,Jean,"two\nlines"\n0475,,\n')
    with pytest.raises(ContactsError, match="line 4: the name of 0475 is empty"):
        read_csv(path)
