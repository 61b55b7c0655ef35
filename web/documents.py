"""Documents for the people the shop records: each one standalone HTML file in the reader's
language, that reads on a screen and prints on A4 (print CSS, no navigation), rendered inside a
request or outside one (a bundle is made in the background, or by `callrec export`).

The style is inlined, so a document saved from a bundle shows the same anywhere; when the web UI
serves one, its Content-Security-Policy allows that one style block by its hash, nothing else.
"""

import base64
import hashlib
import re
from functools import lru_cache, partial
from importlib import resources

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape

from web.i18n import LANGUAGES, day, duration, translate, when
from web.security import CSP

CSS = resources.files("web").joinpath("static", "document.css").read_text(encoding="utf-8")
DOCUMENT_CSP = CSP.replace("style-src 'self'",
                           f"style-src 'sha256-{base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()}'")


@lru_cache(maxsize=1)
def _environment() -> Environment:
    environment = Environment(loader=PackageLoader("web", "templates"), autoescape=select_autoescape(["html"]),
                              trim_blocks=True, lstrip_blocks=True)
    environment.filters["code"] = code_spans
    return environment


def code_spans(text: str) -> Markup:
    """A translated text with its `code` spans shown as code (the rest escaped)."""
    return Markup(re.sub(r"`([^`]*)`", r"<code>\1</code>", str(escape(text))))


def render_document(template: str, lang: str, **context) -> str:
    """The document `template` in `lang` (one of the UI's languages), with `context`."""
    if lang not in LANGUAGES:
        raise ValueError(f"no documents in {lang!r}: one of {', '.join(LANGUAGES)}")
    return _environment().get_template(template).render(
        _=partial(translate, lang), when=partial(when, lang=lang), day=partial(day, lang=lang), duration=duration,
        lang=lang, languages=LANGUAGES, css=CSS, **context)


def document_response(html: str):
    """A Flask response serving a rendered document under its own Content-Security-Policy."""
    from flask import make_response

    response = make_response(html)
    response.headers["Content-Security-Policy"] = DOCUMENT_CSP
    return response
