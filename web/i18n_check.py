"""Whether the translations fit the UI: which texts the templates and web modules show through `_()`
(their `_("…")` literals, read with Jinja's and Python's own parsers, the texts of the errors the
pages show, and `DYNAMIC_TEXTS`), and for
each language which of them lack a translation, which translations nothing uses any more, and which
lose a `{placeholder}` or a `code` span of the English.
"""

import ast
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment
from jinja2.ext import extract_from_ast

from web.i18n import DYNAMIC_TEXTS

WEB = Path(__file__).resolve().parent
CODE_SPAN = re.compile(r"`[^`]*`")
# The errors whose messages the pages show translated (through `error_text`), and where they are raised.
SHOWN_ERRORS = {"AccountError", "ExportRefused", "StoreActionError", "ObjectionError", "MailError", "ContactError",
                "DuplicateContact"}
ERROR_SOURCES = ("web/*.py", "appliance/store/*.py", "appliance/mail.py")


def template_texts(source: str) -> list[tuple[int, str]]:
    """The `_("…")` literals (first argument a string constant) of a Jinja template, with line numbers."""
    found = []
    for line, _name, message in extract_from_ast(Environment().parse(source), ("_",)):
        first = message[0] if isinstance(message, tuple) else message     # the others are keywords' values
        if first is not None:
            found.append((line, first))
    return found


def python_texts(source: str) -> list[tuple[int, str]]:
    """The `_("…")` literals (first argument a string constant) of a Python module, with line numbers."""
    return [(node.lineno, node.args[0].value) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)]


def raised_texts(source: str) -> list[tuple[int, str]]:
    """The texts of a Python module's `SomeError("…", …)` for the errors in `SHOWN_ERRORS`;
    a text may also be a module-level string constant."""
    tree = ast.parse(source)
    constants = {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                 for target in node.targets if isinstance(target, ast.Name)
                 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}
    found = []
    for node in ast.walk(tree):
        # Raised where it is made, or made by a function that explains another error and raised by its caller.
        if not (isinstance(node, ast.Call) and node.args
                and isinstance(node.func, ast.Name) and node.func.id in SHOWN_ERRORS):
            continue
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            found.append((node.lineno, first.value))
        elif isinstance(first, ast.Name) and first.id in constants:
            found.append((node.lineno, constants[first.id]))
    return found


def used_texts(web: Path = WEB) -> dict[str, str]:
    """Every text the UI passes through `_()`, with where it is first used."""
    used = {}
    sources = [(path, template_texts) for path in sorted((web / "templates").glob("*.html"))]
    sources += [(path, python_texts) for path in sorted(web.glob("*.py"))]
    sources += [(path, raised_texts) for pattern in ERROR_SOURCES for path in sorted(web.parent.glob(pattern))]
    for path, extract in sources:
        for line, text in extract(path.read_text(encoding="utf-8")):
            used.setdefault(text, f"{path.relative_to(web.parent)}:{line}")
    for text in DYNAMIC_TEXTS:
        used.setdefault(text, "web/i18n.py DYNAMIC_TEXTS")
    return used


def translations(lang: str, web: Path = WEB) -> dict[str, str]:
    """The translation file of `lang` as it is on disk."""
    return json.loads((web / "translations" / f"{lang}.json").read_text(encoding="utf-8"))


def placeholders(text: str) -> set[str]:
    """The `{name}` fields of a text."""
    return {field for _literal, field, _spec, _conversion in string.Formatter().parse(text) if field is not None}


@dataclass
class LanguageReport:
    """What one translation file lacks or has too much of."""

    missing: list[str]           # used texts without a (non-empty) translation
    unused: list[str]            # translated texts the UI no longer uses
    mismatched: list[str]        # translations whose placeholders or `code` spans differ from the English

    @property
    def ok(self) -> bool:
        """Whether the language is complete and clean."""
        return not (self.missing or self.unused or self.mismatched)


def _mismatched(english: str, translated: str) -> bool:
    try:
        fields = placeholders(translated)
    except ValueError:              # an unbalanced brace: gettext's format() would fail on it
        return True
    return fields != placeholders(english) or set(CODE_SPAN.findall(translated)) != set(CODE_SPAN.findall(english))


def check_language(lang: str, web: Path = WEB) -> LanguageReport:
    """Compare the translation file of `lang` with the texts the UI uses."""
    used, catalogue = used_texts(web), translations(lang, web)
    return LanguageReport(
        missing=sorted(text for text in used if not catalogue.get(text)),
        unused=sorted(text for text in catalogue if text not in used),
        mismatched=sorted(text for text, translated in catalogue.items()
                          if translated and _mismatched(text, translated)))
