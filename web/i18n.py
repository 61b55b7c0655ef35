"""The UI's languages: English, French, Dutch and Polish, picked from the browser and switchable.

Texts are written in English in the code and templates; `translations/<lang>.json` maps each to its
translation (a missing one shows the English). Dates, numbers and durations follow the locale
through Babel.
"""

import json
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from importlib import resources

from babel.dates import format_date, format_datetime, format_time, format_timedelta
from babel.numbers import format_decimal
from flask import g, request

from appliance.advice import TEXTS as ADVICE_TEXTS
from appliance.alarms import TITLES as ALARM_TITLES
from appliance.config import DEFAULT_PURPOSES
from appliance.errors import CallrecError

LANGUAGES = {"en": "English", "fr": "Français", "nl": "Nederlands", "pl": "Polski"}
LANG_COOKIE = "lang"

# Texts that reach `_()` as values, not as `_("…")` literals, so no extractor finds them in the code.
DYNAMIC_TEXTS = (
    "incoming", "outgoing", "unknown",                                    # call directions
    "recording", "complete", "interrupted", "discarded", "missed",        # call states
    "idle", "ringing", "in_call", "paused",                               # line states
    "training", "agreement", "legal-obligation",                          # purposes
    "admin", "supervisor", "staff",                                       # roles
    "held", "restricted",                                                 # list filters (with two above)
    "button", "dtmf", "screen", "declined", "objected", "private", "off-schedule", "not-selected",  # pause, discard reasons
    "listen", "live-listen", "pause", "resume", "download", "export", "erased", "expired", "hold", "release",   # audit actions
    "reclassify", "notes", "login", "login-failed", "setup", "settings", "account",
    "restrict", "lift-restriction", "open-restricted", "erasure", "do-not-record", "record-again", "rectify",
    "access-report", "contact-add", "contact-edit", "contact-delete", "contact-import", "contact-export",
    *(purpose.legal_basis for purpose in DEFAULT_PURPOSES.values()),    # the built-in purposes' legal bases
    "password-changed", "second-factor-on", "second-factor-off", "store-unlocked", "key-slot-added",
    *ALARM_TITLES.values(),                                               # the alarms
    "Bad Request", "Unauthorized", "Forbidden", "Not Found", "Method Not Allowed",   # HTTP errors
    "Conflict", "Request Entity Too Large", "Internal Server Error", "Locked",
    *ADVICE_TEXTS.values(),                                               # the settings' warnings
)


@lru_cache(maxsize=None)
def catalogue(lang: str) -> dict[str, str]:
    """The translations of one language (English has only the names of values, e.g. `in_call`)."""
    text = resources.files("web").joinpath("translations", f"{lang}.json").read_text(encoding="utf-8")
    return json.loads(text)


def pick_language(user_language: str | None = None) -> str:
    """The language of this request: the switcher's cookie, else the user's own, else the browser's."""
    chosen = request.cookies.get(LANG_COOKIE)
    if chosen in LANGUAGES:
        return chosen
    if user_language in LANGUAGES:
        return user_language
    return request.accept_languages.best_match(list(LANGUAGES)) or "en"


def gettext(text: str, **values) -> str:
    """`text` in the request's language, with `{name}` placeholders filled from `values`."""
    return translate(getattr(g, "lang", "en"), text, **values)


def translate(lang: str, text: str, **values) -> str:
    """`text` in `lang`, with `{name}` placeholders filled from `values`."""
    translated = catalogue(lang).get(text) or text
    return translated.format(**values) if values else translated


def error_text(exc: Exception) -> str:
    """An error's message in the request's language: a CallrecError's text translated and filled
    with its values, any other error's message as it is."""
    if isinstance(exc, CallrecError) and isinstance(exc.text, str):
        return gettext(exc.text, **exc.values)
    return str(exc)


def _local(value: str | datetime | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone()          # the appliance's time zone: the shop's


def when(value, style: str = "medium", lang: str | None = None) -> str:
    """A timestamp (ISO 8601 UTC) as the shop's local date and time, in the user's locale (or `lang`)."""
    moment = _local(value)
    return "" if moment is None else format_datetime(moment, style, tzinfo=moment.tzinfo, locale=lang or g.lang)


def day(value, lang: str | None = None) -> str:
    """The local date of a timestamp, in the user's locale (or `lang`)."""
    moment = _local(value)
    return "" if moment is None else format_date(moment, "medium", locale=lang or g.lang)


def clock(value) -> str:
    """The local time of day of a timestamp."""
    moment = _local(value)
    return "" if moment is None else format_time(moment, "short", tzinfo=moment.tzinfo, locale=g.lang)


def duration(seconds: float | None) -> str:
    """A call's length as m:ss (h:mm:ss past an hour): the same in every language."""
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def span(seconds: float, lang: str | None = None) -> str:
    """A long span in words ("3 days"), in the user's locale (or `lang`)."""
    return format_timedelta(timedelta(seconds=seconds), threshold=1.5, locale=lang or g.lang)


def number(value: float, digits: int = 0) -> str:
    """A number with the locale's separators."""
    return format_decimal(round(value, digits), format=f"#,##0{'.' + '0' * digits if digits else ''}", locale=g.lang)


def data_size(size: int) -> str:
    """A size in bytes as people read it: kB below a megabyte, then MB, then GB (powers of 1000,
    as disks are sold; the same rule as `dataSize` in app.js)."""
    for unit, scale, digits in (("GB", 1e9, 1), ("MB", 1e6, 1)):
        if size >= scale:
            return f"{number(size / scale, digits)} {unit}"
    return f"{number(size / 1e3, 0)} kB"


def template_helpers() -> dict:
    """What the templates use: `_`, the formatters and the languages."""
    return {"_": gettext, "when": when, "day": day, "clock": clock, "duration": duration, "span": span,
            "number": number, "data_size": data_size, "languages": LANGUAGES}
