"""What the pages show of a sealed store's personal fields, and how they find calls by number.

Rows are read as stored and opened here, for display only, with the opener the web holds in RAM
once a login has unlocked the store. While it is locked the pages show the clear fields (times,
lines, states, purposes, durations) and "locked" for the sealed ones. A number is found by its tag,
an exact match on the normalised number: a sealed catalogue cannot be searched for part of a
number, nor its notes for a word; a name is found through the contacts it belongs to.
"""

from dataclasses import replace

from appliance.contacts import ContactsError, normalise
from appliance.store.catalogue import CallFilter
from appliance.store.personal import CALL_FIELDS, DIGIT_FIELD, number_tag, opened_call
from appliance.store.sealing import StoreLocked
from web.backend import backend
from web.i18n import gettext as _


def shown_calls(rows: list[dict]) -> list[dict]:
    """Call rows as a page shows them: opened, their callers named from the contacts; "locked"
    in place of each sealed field while the store is locked. A plain store's rows as they are."""
    if backend().sealer is None:
        return rows
    try:
        opener = backend().reading()
    except StoreLocked:
        locked = _("locked")
        return [{**row, **{name: locked for name in CALL_FIELDS if row.get(name) is not None}} for row in rows]
    rows = [opened_call(opener, row) for row in rows]
    unnamed = [row["number_tag"] for row in rows if row.get("number_tag") and not row.get("contact_name")]
    names = backend().directory.names(unnamed) if unnamed else {}
    return [{**row, "contact_name": row.get("contact_name") or names.get(row.get("number_tag"))} for row in rows]


def shown_call(row: dict) -> dict:
    """One call row as a page shows it (see `shown_calls`)."""
    return shown_calls([row])[0]


def shown_digits(digits: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """A call's keys (offset, key) as a page shows them: "locked" while the store is."""
    if backend().sealer is None:
        return digits
    try:
        opener = backend().reading()
    except StoreLocked:
        return [(offset, _("locked")) for offset, _key in digits]
    return [(offset, opener.open_field(key, DIGIT_FIELD)) for offset, key in digits]


def sealed_filter(which: CallFilter) -> CallFilter:
    """`which` as a sealed catalogue can answer it: a number, or the written forms of one, by its
    tag; a text by the tag of the number it is, or of the contacts whose name holds it. StoreLocked
    while the store is locked and a number or text is asked for."""
    if backend().sealer is None or (which.number is None and which.numbers is None and not which.text):
        return which
    opener, country = backend().reading(), backend().config.recorder.country_code
    chosen = []
    if which.number is not None:
        chosen.append({number_tag(opener, which.number, country)})
    if which.numbers is not None:
        chosen.append({number_tag(opener, number, country) for number in which.numbers})
    if which.text:
        chosen.append(_text_tags(opener, which.text, country))
    tags = set.intersection(*chosen)
    return replace(which, number=None, numbers=None, text=None, tags=tuple(sorted(tags)))


def _text_tags(opener, text: str, country: str) -> set[str]:
    """The tags a free-text search stands for: the number it is, and the contacts it names."""
    tags = set()
    try:
        tags.add(number_tag(opener, normalise(text, country), country))
    except ContactsError:
        pass
    needle = text.casefold()
    for contact in backend().directory.entries():
        if needle in contact.name.casefold() or needle in (contact.company or "").casefold():
            tags.add(number_tag(opener, contact.number, country))
    return tags
