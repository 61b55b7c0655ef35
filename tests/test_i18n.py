"""The UI in French, Dutch and Polish: every text it shows is translated, with its placeholders and
`code` intact and no stale entries; the value lists the code shows through `_()` are all known to
the check; pages come out in the browser's language, or the one picked with the switcher."""

import os
import re
import time

import pytest
from werkzeug.exceptions import default_exceptions

from appliance.store.catalogue import STATES
from appliance.config import DEFAULT_PURPOSES
from conftest import write_config
from web.accounts import ROLES, AccountError, Accounts
from web.calls import DIRECTIONS, FLAGS
from web.i18n_check import check_language, used_texts

LANGS = ("fr", "nl", "pl")
PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.mark.parametrize("lang", LANGS)
def test_every_ui_text_has_a_translation(lang):
    assert check_language(lang).missing == []


@pytest.mark.parametrize("lang", LANGS)
def test_translations_keep_placeholders_and_code(lang):
    assert check_language(lang).mismatched == []


@pytest.mark.parametrize("lang", LANGS)
def test_no_translation_is_left_over(lang):
    assert check_language(lang).unused == []


def refusals(attempts) -> set[str]:
    """The texts (before their values are filled in) of the AccountErrors the attempts end with."""
    messages = set()
    for attempt in attempts:
        try:
            attempt()
        except AccountError as exc:
            messages.add(exc.text)
    return messages


def expire(accounts) -> bool:
    """Make a setup code a day old."""
    accounts.setup_code()
    os.utime(accounts.setup_code_path, (time.time() - 86400, time.time() - 86400))
    return True


def account_errors(folder) -> set[str]:
    """The text of each refusal the accounts can make."""
    accounts = Accounts(folder)
    try:
        messages = refusals([
            lambda: accounts.complete_setup("AAAA-AAAA-AAAA", "boss", PASSWORD),      # no code made yet
            lambda: expire(accounts) and accounts.complete_setup("AAAA-AAAA-AAAA", "boss", PASSWORD),
            lambda: accounts.setup_code(renew=True) and accounts.complete_setup("AAAA-AAAA-AAAA", "boss", PASSWORD),
            lambda: accounts.add_user("no spaces please", PASSWORD, "staff", None),
            lambda: accounts.add_user("clerk", PASSWORD, "owner", None),
            lambda: accounts.add_user("clerk", "short", "staff", None),
            lambda: accounts.add_user("clerk", "x" * 1025, "staff", None),
            lambda: accounts.add_user("clerk", "password1234", "staff", None),
            lambda: accounts.add_user("clerk", "aaaaaaaaaaaaaaaa", "staff", None),
            lambda: accounts.authenticate("nobody", PASSWORD),
            lambda: accounts.add_token(" ", "staff", None, "user:boss")])
        admin = accounts.add_user("boss", PASSWORD, "admin", None)
        messages |= refusals([
            lambda: accounts.complete_setup("AAAA-AAAA-AAAA", "boss2", PASSWORD),
            lambda: accounts.update_user(admin.id, role="staff"),
            lambda: accounts.delete_user(admin.id),
            lambda: accounts.add_user("boss", PASSWORD, "staff", None),
            lambda: accounts.set_second_factor(admin.id, accounts.new_second_factor_secret(), "000000")])
    finally:
        accounts.close()
    return messages


def test_values_shown_through_gettext_are_all_known(tmp_path):
    shown = {*STATES, *ROLES, *DIRECTIONS, *FLAGS, *DEFAULT_PURPOSES}
    shown |= {default_exceptions[code]().name for code in (400, 401, 403, 404, 405, 409, 413, 500)}
    errors = account_errors(tmp_path)
    assert len(errors) == 15 and any("most common" in message for message in errors)
    assert sorted((shown | errors) - set(used_texts())) == []


@pytest.fixture
def app(tmp_path):
    """The web UI of an appliance with one line and no account yet."""
    from web import create_app

    app = create_app(write_config(tmp_path, recorder={"data_dir": str(tmp_path / "data")}), secure_cookies=False)
    yield app
    app.extensions["callrec"].close()


@pytest.mark.parametrize("header, lang, text", [("fr-BE,fr;q=0.9", "fr", "Se connecter"),
                                                ("nl-BE,nl;q=0.9,en;q=0.5", "nl", "Aanmelden"),
                                                ("pl-PL,pl;q=0.9", "pl", "Zaloguj się")])
def test_login_page_in_the_browsers_language(app, header, lang, text):
    app.extensions["callrec"].accounts.add_user("admin", PASSWORD, "admin", None)
    page = app.test_client().get("/login", headers={"Accept-Language": header}).get_data(as_text=True)
    assert f'<html lang="{lang}">' in page
    assert f"<h1>{text}</h1>" in page and "Log in" not in page


def test_the_chosen_language_wins_over_the_browsers(app):
    app.extensions["callrec"].accounts.add_user("admin", PASSWORD, "admin", None)
    client = app.test_client()
    client.set_cookie("lang", "pl")
    page = client.get("/login", headers={"Accept-Language": "fr-BE,fr;q=0.9"}).get_data(as_text=True)
    assert "Zaloguj się" in page and "Se connecter" not in page


def test_an_account_refusal_is_shown_in_the_users_language(app):
    client = app.test_client()
    headers = {"Accept-Language": "nl-BE"}
    form = client.get("/setup", headers=headers).get_data(as_text=True)
    response = client.post("/setup", headers=headers, data={
        "csrf_token": CSRF.search(form).group(1), "code": "AAAA-AAAA-AAAA", "name": "boss",
        "password": PASSWORD, "confirm": PASSWORD})
    assert response.status_code == 400
    assert "de installatiecode is onjuist" in response.get_data(as_text=True)


@pytest.mark.parametrize("lang, text", [("fr", "Cet appel est déjà en pause."), ("nl", "Dit gesprek is al gepauzeerd."),
                                        ("pl", "Ta rozmowa jest już wstrzymana.")])
def test_the_recorders_refusal_is_worded_in_the_users_language(app, lang, text):
    from flask import g

    from web.live import refusal_text

    paused = {"ok": False, "error": "line t1: the call is already paused", "reason": "already-paused", "values": {}}
    full = {"ok": False, "error": "line t1: 2 listeners already (listeners_per_line)", "reason": "listeners-full",
            "values": {"limit": 2}}
    unnamed = {"ok": False, "error": "line: no line named 't9'"}
    with app.test_request_context():
        g.lang = lang
        assert refusal_text(paused) == text
        assert refusal_text(full).startswith("2 ") or " 2 " in refusal_text(full)
        assert refusal_text(unnamed) == "line: no line named 't9'"      # no reason named: as the recorder says it
