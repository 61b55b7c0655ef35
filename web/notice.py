"""The information the shop gives before it records (GDPR Art. 13), generated from the settings in
the four languages: the privacy notice at `/privacy-notice` and the sheet for the shop's counter,
both public (see below), the information sheet for the shop's staff, the text of each line's
spoken notice, and the settings' warnings about what the information lacks.

The notice and the counter sheet need no login: they are what the shop must show anyone it
records, they name nobody but the shop, and the web UI is reachable on the shop's LAN only. They
show no line's wiring, no internal address and no call; the staff sheet, which names the users who
may listen, is for logged-in users.
"""

import re
from functools import partial

from flask import Blueprint, abort, request

from appliance.config import Config
from appliance.transparency import controller_facts
from web.backend import backend
from web.documents import document_response, render_document
from web.i18n import LANGUAGES, gettext as _, translate
from web.security import require

bp = Blueprint("notice", __name__)

# A legal basis left at a placeholder: a marker anywhere in it, or nothing but one.
PLACEHOLDER = re.compile(r"\b(todo|tbd|fixme|xxx+|lorem ipsum)\b|\?\?|^\W*(n/a|legal basis|placeholder|none)?\W*$", re.I)
# The words for each key a notice may say instead of the key itself.
KEY_WORDS = {
    "0": ("zero", "zéro", "nul"), "1": ("one", "un", "een", "jeden"), "2": ("two", "deux", "twee", "dwa"),
    "3": ("three", "trois", "drie", "trzy"), "4": ("four", "quatre", "vier", "cztery"),
    "5": ("five", "cinq", "vijf", "pięć"), "6": ("six", "zes", "sześć"), "7": ("seven", "sept", "zeven", "siedem"),
    "8": ("eight", "huit", "acht", "osiem"), "9": ("nine", "neuf", "negen", "dziewięć"),
    "*": ("star", "étoile", "etoile", "sterretje", "ster", "gwiazdka", "gwiazdkę"),
    "#": ("hash", "pound", "dièse", "hekje", "kratka", "kratkę", "krzyżyk"),
}


def mentions_key(text: str, key: str) -> bool:
    """Whether a notice's text names `key` (as the key, or as its word in one of the languages)."""
    if re.search(rf"(?<![0-9]){re.escape(key)}(?![0-9])", text):
        return True
    return any(re.search(rf"\b{word}\b", text, re.I) for word in KEY_WORDS.get(key, ()))


def is_placeholder(legal_basis: str) -> bool:
    """Whether a legal basis was left at a placeholder (or is too short to say anything)."""
    return PLACEHOLDER.search(legal_basis.strip()) is not None or len(legal_basis.strip()) < 6


def settings_warnings(config: Config) -> list[str]:
    """What the settings leave the privacy information without, in the request's language: the
    controller's identity, a legal basis, an opt-out key the spoken notice does not name."""
    warnings = []
    missing = config.privacy.identity_missing()
    if missing:
        warnings.append(_("The controller's identity is missing ({keys} in [privacy]): the privacy notice and the "
                          "access reports cannot say who answers for the recordings.",
                          keys=", ".join(f"privacy.{key}" for key in missing)))
    for name, purpose in config.purpose.items():
        if is_placeholder(purpose.legal_basis):
            warnings.append(_("Purpose {purpose}: its legal basis is empty or a placeholder ({basis}); the privacy "
                              "notice and the access reports show it.", purpose=name, basis=purpose.legal_basis))
    for line in [*config.line, *config.sip_trunk]:
        if line.optout_digit is None or not line.record:
            continue
        if line.notice_text is None:
            warnings.append(_("Line {line}: the opt-out key {key} is set but the notice's text (notice_text) is not "
                              "given: write down what the notice says, so that it can be checked that it tells "
                              "callers to press {key}.", line=line.name, key=line.optout_digit))
        elif not mentions_key(line.notice_text, line.optout_digit):
            warnings.append(_("Line {line}: the notice's text does not mention the opt-out key {key}: callers are "
                              "not told how to refuse.", line=line.name, key=line.optout_digit))
    return warnings


def key_name(key: str, lang: str) -> str:
    """A key as a notice says it: the digit, or the word for * and #."""
    _ = partial(translate, lang)
    return {"*": _("the star key"), "#": _("the hash key")}.get(key, key)


def spoken_notice(config: Config, line, lang: str) -> str:
    """The text for a line's spoken notice in `lang`, from its settings: who records and why, the
    opt-out key, the pause for card payments, where to learn more."""
    _ = partial(translate, lang)
    controller = config.privacy.controller
    parts = [_("{controller} records this call.", controller=controller) if controller else _("This call is recorded."),
             _("Purpose: {purpose}.", purpose=_(line.purpose))]
    if line.optout_digit:
        parts.append(_("If you do not want it recorded, press {key} now.", key=key_name(line.optout_digit, lang)))
    if line.pause_code or getattr(line, "pause_button_pin", None) is not None:
        parts.append(_("The recording is paused while you give card details."))
    parts.append(_("Ask us for our privacy notice and your rights."))
    return " ".join(parts)


def _lines(config: Config, lang: str) -> list[dict]:
    """Each recorded line's rules, as the documents describe them (no wiring, no addresses)."""
    return [{"name": line.name, "record": line.record, "purpose": line.purpose, "incoming": line.notice_incoming,
             "outgoing": line.outgoing, "record_from": line.record_from, "optout": line.optout_digit,
             "optout_key": line.optout_digit and key_name(line.optout_digit, lang),
             "pause_code": line.pause_code, "pause_button": getattr(line, "pause_button_pin", None) is not None,
             "private_code": line.private_code, "private_window_s": line.private_window_s,
             "spoken": spoken_notice(config, line, lang)}
            for line in [*config.line, *config.sip_trunk]]


def _language() -> str:
    lang = request.args.get("lang") or backend().config.privacy.language
    if lang not in LANGUAGES:
        abort(400, description=_("There is no privacy notice in this language."))
    return lang


def _document(template: str, **context):
    config = backend().config
    lang = _language()
    lines = _lines(config, lang)
    return document_response(render_document(
        template, lang, facts=controller_facts(config), purposes=config.purpose, lines=lines,
        opt_out=any(line["optout"] for line in lines if line["record"]),
        card_pause=any(line["pause_code"] or line["pause_button"] for line in lines if line["record"]),
        path=request.path, **context))


@bp.route("/privacy-notice")
def public():
    """The privacy notice for everyone the shop records (public, see the module's docstring)."""
    return _document("notice.html")


@bp.route("/privacy-notice/sheet")
def sheet():
    """The notice on one printed page for the shop's counter (public, like the notice)."""
    return _document("notice_sheet.html")


@bp.route("/privacy-notice/staff")
@require("staff")
def staff():
    """The information sheet for the shop's staff: what is recorded on their lines, the pause and
    private-call keys, who may listen, how long calls are kept, their rights."""
    accounts = backend().accounts
    listeners = [{"name": u["name"], "role": u["role"], "lines": u["lines"]} for u in accounts.users()]
    listeners += [{"name": t["name"], "role": t["role"], "lines": t["lines"], "token": True} for t in accounts.tokens()]
    return _document("notice_staff.html", listeners=listeners)
