"""The technician's pages: lines, the notice (uploaded, or spoken by espeak-ng from a text),
purposes and retention, the privacy information (controller, authority, recipients, with warnings
of what it lacks), store limits, users and API tokens.

A change is validated exactly as the configuration file is at start-up (the same model, the same
messages), written atomically with a backup of the previous file, keeping the technician's comments
and layout around the values it changes, and the recorder is told to reload: purposes, limits and notices apply at once, a line's wiring at the recorder's next start.
"""

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import tomlkit
from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, session, url_for

from appliance.config import Config, format_validation_error, resolve_paths
from appliance.errors import CallrecError
from appliance.mail import MailError, message, send
from appliance.notice import load_notice
from pydantic import ValidationError
from web import keyring
from web.accounts import ROLES, AccountError
from web.auth import confirmed
from web.backend import backend
from web.certificate import CERT_NAME, OWN_MARK, TLS_DIR, CertificateError, install_own, use_issued
from web.i18n import LANGUAGES, error_text, gettext as _
from web.notice import settings_warnings, spoken_notice
from web.security import client_address, current, require, session_idle_s
from web.status import advice

bp = Blueprint("settings", __name__, url_prefix="/settings")

MAX_NOTICE_BYTES = 10 * 1024 * 1024
SPEECH_VOICES = {"en": "en", "fr": "fr", "nl": "nl", "pl": "pl", "de": "de"}
MAX_SPEECH_CHARS = 600


def _opt(convert):
    return lambda text: None if text.strip() == "" else convert(text.strip())


def _pin(text: str):
    return int(text) if text.isdigit() else text


def _flag(text: str) -> bool:
    return text == "on"


def _entries(text: str) -> list[str] | None:
    # One entry per line of a text area; none removes the key.
    return [line.strip() for line in text.splitlines() if line.strip()] or None


# The line settings the page edits, with how a form field becomes a config value; an empty field
# removes an optional key. Everything else in the file is kept as it is.
CALL_RULE_FIELDS = {
    "purpose": str, "notice_incoming": _flag, "outgoing": str, "beep_interval_s": float, "record_from": str,
    "optout_digit": _opt(str), "optout_window_s": float, "pause_code": _opt(str), "pause_max_s": float,
    "keep_declined_number": _flag, "record": _flag, "private_code": _opt(str), "private_window_s": float,
    "notice_text": _opt(lambda text: text.replace("\r\n", "\n")),
    "schedule": _entries, "record_one_in": int,
}
LINE_FIELDS = {
    **CALL_RULE_FIELDS, "answer_fallback_s": float, "capture": str, "playback": str,
    "hook_pin": _pin, "hook_active": str, "ring_pin": _opt(_pin), "ring_active": str, "modem": _opt(str),
}
TRUNK_FIELDS = {**CALL_RULE_FIELDS, "rtp_timeout_s": float}
# Keys of earlier versions a form's key replaces: both in the file would contradict each other.
REPLACED_KEYS = {"outgoing": ("notice_outgoing", "notice_outgoing_after_s")}
STORE_FIELDS = {"max_archive_mb": int, "min_free_mb": int, "min_free_hours": float, "cleaner_interval_s": float}


def _addresses(text: str) -> list[str] | None:
    return [part.strip() for part in text.replace(";", ",").split(",") if part.strip()] or None


ALARM_FIELDS = {
    "smtp_host": _opt(str), "smtp_port": _opt(int), "security": str, "ca_file": _opt(str), "username": _opt(str),
    "from_address": _opt(str), "to": _addresses, "reminder_hours": float, "webhook": _flag,
}
MAIL_KEYS = ("smtp_port", "ca_file", "username", "password_file", "from_address", "to")
PASSWORD_NAME = "alarm-mail.password"


class SettingsError(ValueError):
    """A refused change; the message names the key, as a config file error would."""


def raw_config() -> tomlkit.TOMLDocument:
    """The configuration file as written (paths relative as the technician wrote them), as a
    document that keeps its comments and layout when changed and written back."""
    return tomlkit.parse(backend().config_path.read_text(encoding="utf-8"))


def save_config(raw: tomlkit.TOMLDocument, what: str) -> None:
    """Validate `raw` like the file at start-up; if it passes, replace the file (keeping a backup),
    reload, audit, and tell the recorder."""
    path = backend().config_path
    try:
        resolve_paths(Config.model_validate(raw.unwrap()), path)
    except ValidationError as exc:
        raise SettingsError(format_validation_error(path, exc)) from None
    except CallrecError as exc:
        raise SettingsError(str(exc)) from None
    text = tomlkit.dumps(raw)
    shutil.copy2(path, path.with_name(path.name + ".bak"))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, os.stat(path).st_mode & 0o777)
    os.replace(tmp, path)
    backend().reload()
    backend().catalogue.add_audit(current().actor, "settings", detail=what, address=client_address())
    if backend().signal_recorder():
        flash(_("Saved and applied. A change to a line's wiring or sound card applies when the recorder restarts."))
    else:
        flash(_("Saved. The recorder is not running: it will use these settings when it starts."))


def _form_values(fields: dict) -> dict:
    values = {}
    for key, convert in fields.items():
        if convert is _flag:
            # A checkbox sends "on" after its hidden "off", so the form always says which.
            if key in request.form:
                values[key] = "on" in request.form.getlist(key)
            continue
        text = request.form.get(key)
        if text is None:
            continue
        try:
            values[key] = convert(text)
        except ValueError:
            raise SettingsError(_("{key}: not a valid value: {value}", key=key, value=text)) from None
    return values


def _apply(section: dict, values: dict) -> None:
    for key, value in values.items():
        for old in REPLACED_KEYS.get(key, ()):
            section.pop(old, None)
        if value is None:
            section.pop(key, None)
        else:
            section[key] = value


def _saving(change, what: str, anchor: str, undo=None):
    """Apply `change` to the file's document and save it; a refused change is explained, and
    `undo` (if given) takes back what `change` did outside the file."""
    try:
        raw = raw_config()
        change(raw)
        save_config(raw, what)
    except SettingsError as exc:
        flash(str(exc), "error")
        if undo is not None:
            undo()
    return redirect(url_for("settings.index") + f"#{anchor}")


@bp.route("/")
@require("admin")
@confirmed
def index():
    """Lines, notice, purposes, store limits."""
    raw = raw_config().unwrap()
    notices = sorted((backend().data_dir / "notices").glob("*")) if (backend().data_dir / "notices").is_dir() else []
    config = backend().config
    spoken = {line.name: spoken_notice(config, line, config.privacy.language) for line in [*config.line, *config.sip_trunk]}
    return render_template("settings.html", raw=raw, config=config, voices=SPEECH_VOICES,
                           notices=notices, config_path=backend().config_path, certificate=served_certificate(),
                           advice=advice(), privacy_warnings=settings_warnings(config), spoken=spoken,
                           document_languages=LANGUAGES)


def _tls_folder() -> Path:
    return backend().accounts.folder / TLS_DIR


def served_certificate() -> dict | None:
    """What the web UI's certificate says: its names, its end, whether the owner uploaded it."""
    from cryptography import x509

    try:
        leaf = x509.load_pem_x509_certificate((_tls_folder() / CERT_NAME).read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName) + san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    return {"names": names, "ends": leaf.not_valid_after_utc.isoformat(), "uploaded": (_tls_folder() / OWN_MARK).exists(),
            "subject": leaf.subject.rfc4514_string()}


@bp.route("/certificate", methods=["POST"])
@require("admin")
@confirmed
def certificate():
    """Serve the owner's certificate and key (PEM files) instead of the appliance's, or go back."""
    reload = current_app.extensions.get("reload_certificate")
    if request.form.get("action") == "issued":
        use_issued(_tls_folder(), backend().config.web.hostname)
        what = "web certificate: back to the appliance's own"
    else:
        cert, key = request.files.get("certificate"), request.files.get("key")
        try:
            if not cert or not key:
                raise CertificateError("choose both files: the certificate (with its chain) and its key")
            leaf = install_own(_tls_folder(), cert.read(), key.read())
        except CertificateError as exc:
            flash(_("The certificate was not installed: {reason}", reason=str(exc)), "error")
            return redirect(url_for("settings.index") + "#certificate")
        what = f"web certificate uploaded: {leaf.subject.rfc4514_string()}"
    if reload is not None:
        reload()
    backend().catalogue.add_audit(current().actor, "settings", detail=what, address=client_address())
    flash(_("The web UI serves the new certificate to new connections."))
    return redirect(url_for("settings.index") + "#certificate")


def _change_entry(table: str, name: str, fields: dict, what: str, anchor: str):
    """Change the `[[table]]` entry called `name` from the form's `fields`."""
    def change(raw):
        entries = [entry for entry in raw.get(table, []) if entry.get("name") == name]
        if not entries:
            abort(404)
        _apply(entries[0], _form_values(fields))
    return _saving(change, what, anchor)


@bp.route("/line/<name>", methods=["POST"])
@require("admin")
@confirmed
def line(name: str):
    """Change one line's settings."""
    return _change_entry("line", name, LINE_FIELDS, f"line {name}", f"line-{name}")


@bp.route("/trunk/<name>", methods=["POST"])
@require("admin")
@confirmed
def trunk(name: str):
    """Change one SIP trunk's call rules (its addresses stay as the file has them)."""
    return _change_entry("sip_trunk", name, TRUNK_FIELDS, f"sip trunk {name}", f"trunk-{name}")


@bp.route("/store", methods=["POST"])
@require("admin")
@confirmed
def store():
    """Change the archive's cap and the free-space floor."""
    return _saving(lambda raw: _apply(raw.setdefault("store", {}), _form_values(STORE_FIELDS)), "store limits", "store")


@bp.route("/alarms", methods=["POST"])
@require("admin")
@confirmed
def alarms():
    """Change where alarms are sent: the mail server, its login (a new password goes to the
    password file, readable by the appliance only), the addresses, the reminders."""
    password = request.form.get("password", "")
    written: list[tuple[Path, str | None]] = []       # (password file, what it held before)

    def change(raw):
        table = raw.setdefault("alarms", {})
        _apply(table, _form_values(ALARM_FIELDS))
        if "smtp_host" not in table:
            for key in MAIL_KEYS:
                table.pop(key, None)
        if "username" not in table:
            table.pop("password_file", None)
        elif password:
            written.append(_new_password(table, password))

    def undo():
        for path, before in written:
            if before is None:
                path.unlink(missing_ok=True)
            else:
                _write_secret(path, before)
    return _saving(change, "alarms", "alarms", undo)


def _new_password(table, password: str) -> tuple[Path, str | None]:
    """Write the mail login's password to its file (made if the table names none); returns the
    file and what it held before (None if it is new), to put back if the change is refused."""
    if "\n" in password or len(password) > 1000:
        raise SettingsError(_("alarms.password_file: the password is one line of at most 1000 characters"))
    path = Path(table.get("password_file") or backend().data_dir / PASSWORD_NAME)
    if not path.is_absolute():
        path = backend().config_path.parent / path
    table["password_file"] = str(path)
    before = path.read_text(encoding="utf-8") if path.exists() else None
    _write_secret(path, password + "\n")
    return path, before


def _write_secret(path: Path, text: str) -> None:
    """Replace `path` with `text`, readable by the appliance's processes only (its owner and its
    group, the recorder's: both send alarm mails), never half written."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)


@bp.route("/alarms/test", methods=["POST"])
@require("admin")
@confirmed
def alarms_test():
    """Send a test e-mail with the saved mail settings, and say plainly why it failed if it did."""
    settings = backend().config.alarms
    if settings is None or settings.smtp_host is None:
        flash(_("Save a mail server first."), "error")
        return redirect(url_for("settings.index") + "#alarms")
    hostname = backend().config.web.hostname
    mail = message(settings, f"[callrec {hostname}] Test e-mail",
                   f"This is a test e-mail of the call recorder {hostname}: its alarms reach you this way.\n")
    try:
        send(settings, [mail])
    except MailError as exc:
        flash(_("The test e-mail was not sent: {reason}", reason=error_text(exc)), "error")
        return redirect(url_for("settings.index") + "#alarms")
    backend().catalogue.add_audit(current().actor, "settings", detail=f"test e-mail to {', '.join(settings.to)}",
                                  address=client_address())
    flash(_("A test e-mail was sent to {to}.", to=", ".join(settings.to)))
    return redirect(url_for("settings.index") + "#alarms")


@bp.route("/purpose", methods=["POST"])
@require("admin")
@confirmed
def purpose():
    """Add a purpose or change one's retention and legal basis."""
    name = request.form.get("name", "").strip()

    def change(raw):
        if not name:
            raise SettingsError(_("purpose: give it a name"))
        try:
            days = int(request.form.get("retention_days", ""))
        except ValueError:
            raise SettingsError(_("purpose.{name}.retention_days: a whole number of days", name=name)) from None
        _apply(raw.setdefault("purpose", {}).setdefault(name, {}),
               {"retention_days": days, "legal_basis": request.form.get("legal_basis", "").strip()})
    return _saving(change, f"purpose {name}", "purposes")


# -- [privacy]: the controller's identity, the authority, the recipients -------------------------------

def _lines_of(text: str) -> list[str] | None:
    return [line.strip() for line in text.splitlines() if line.strip()] or None


PRIVACY_FIELDS = {"controller": _opt(str), "address": _opt(lambda text: text.replace("\r\n", "\n")), "email": _opt(str), "phone": _opt(str),
                  "dpo": _opt(str), "authority": _opt(str), "authority_url": _opt(str), "recipients": _lines_of,
                  "language": str}


@bp.route("/privacy", methods=["POST"])
@require("admin")
@confirmed
def privacy():
    """Change who the privacy notice and the access reports name: the controller, its contacts and
    officer, the supervisory authority, other recipients, the documents' language."""
    return _saving(lambda raw: _apply(raw.setdefault("privacy", {}), _form_values(PRIVACY_FIELDS)),
                   "privacy information", "privacy")


@bp.route("/notice", methods=["POST"])
@require("admin")
@confirmed
def notice():
    """A new notice for some lines: an uploaded sound file, or a text spoken by espeak-ng."""
    targets = request.form.getlist("lines")
    folder = backend().data_dir / "notices"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if not targets:
            raise SettingsError(_("Pick the line(s) the notice is for."))
        path = _uploaded_notice(folder) if request.form.get("source") == "file" else _spoken_notice(folder)
        try:
            load_notice(path, backend().config.recorder.sample_rate)
        except CallrecError as exc:
            path.unlink(missing_ok=True)
            raise SettingsError(_("This file is not a sound file the appliance can play: {error}", error=str(exc))) from None
        raw = raw_config()
        for entry in [*raw.get("line", []), *raw.get("sip_trunk", [])]:
            if entry.get("name") in targets:
                entry["notice"] = str(path)
        save_config(raw, f"notice {path.name} for {', '.join(targets)}")
    except SettingsError as exc:
        flash(str(exc), "error")
    return redirect(url_for("settings.index") + "#notice")


def _store_notice(folder: Path, data: bytes, suffix: str) -> Path:
    path = folder / f"notice-{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
    path.write_bytes(data)
    return path


def _uploaded_notice(folder: Path) -> Path:
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise SettingsError(_("Choose a sound file to upload."))
    data = upload.read(MAX_NOTICE_BYTES + 1)
    if len(data) > MAX_NOTICE_BYTES:
        raise SettingsError(_("The file is too large (10 MB at most)."))
    suffix = Path(upload.filename).suffix.lower()
    if suffix not in (".wav", ".mp3", ".ogg", ".opus", ".flac", ".m4a"):
        raise SettingsError(_("Upload a WAV, MP3, Ogg, Opus, FLAC or M4A file."))
    return _store_notice(folder, data, suffix)


def _spoken_notice(folder: Path) -> Path:
    text = request.form.get("text", "").strip()
    voice = SPEECH_VOICES.get(request.form.get("language", ""))
    if not text or voice is None:
        raise SettingsError(_("Type the notice's text and pick its language."))
    if len(text) > MAX_SPEECH_CHARS:
        raise SettingsError(_("The text is too long ({n} characters at most).", n=MAX_SPEECH_CHARS))
    try:
        wav = subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "--stdout", "--", text], capture_output=True,
                             timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise SettingsError(_("Speech synthesis failed: {error}", error=str(exc))) from None
    return _store_notice(folder, wav, ".wav")


# -- users and tokens ----------------------------------------------------------------------------------

def _lines_field() -> list[str] | None:
    if request.form.get("all_lines"):
        return None
    known = set(backend().config.line_names)
    return [name for name in request.form.getlist("lines") if name in known]


@bp.route("/users")
@require("admin")
@confirmed
def users():
    """Users, where they are logged in, and API tokens."""
    return _users_page()


def _users_page(new_token: str | None = None):
    accounts = backend().accounts
    sessions = {user_id: [{**s, "device": device_name(s["agent"])} for s in open_sessions]
                for user_id, open_sessions in accounts.sessions(session_idle_s()).items()}
    return render_template("users.html", users=accounts.users(), sessions=sessions, tokens=accounts.tokens(),
                           roles=ROLES, lines=backend().config.line_names, new_token=new_token)


# Tokens of a User-Agent header, most telling first (Edge and Opera also say Chrome, Chrome also Safari).
BROWSERS = (("Edg/", "Edge"), ("OPR/", "Opera"), ("Firefox/", "Firefox"), ("Chrome/", "Chrome"),
            ("Safari/", "Safari"))
SYSTEMS = (("Android", "Android"), ("iPhone", "iPhone"), ("iPad", "iPad"), ("Windows", "Windows"),
           ("Mac OS X", "macOS"), ("Linux", "Linux"))


def device_name(agent: str | None) -> str:
    """A browser's User-Agent as a person names it: "Firefox / Android"."""
    agent = agent or ""
    browser = next((name for token, name in BROWSERS if token in agent), None)
    system = next((name for token, name in SYSTEMS if token in agent), None)
    return " / ".join(filter(None, (browser, system))) or agent[:40] or "?"


def _account_change(action, what: str, done: str):
    try:
        action()
    except AccountError as exc:
        flash(error_text(exc), "error")
        return redirect(url_for("settings.users"))
    backend().catalogue.add_audit(current().actor, "account", detail=what, address=client_address())
    flash(done)
    return redirect(url_for("settings.users"))


@bp.route("/users/add", methods=["POST"])
@require("admin")
@confirmed
def add_user():
    """Create a user with a role and the lines they may see."""
    form = request.form
    name = form.get("name", "")
    password = form.get("password", "")

    def add():
        keyring.user_added(backend().accounts.add_user(name, password, form.get("role", ""), _lines_field()), password)
    return _account_change(add, f"user {name} added as {form.get('role')}", _("User added."))


@bp.route("/users/<int:user_id>", methods=["POST"])
@require("admin")
@confirmed
def change_user(user_id: int):
    """Change a user's role and lines, reset their password or second factor, let them try again
    after wrong passwords, or delete them."""
    form, accounts = request.form, backend().accounts
    user = accounts.user(user_id)
    if user is None:
        abort(404)
    action = form.get("action")
    if action == "delete":
        def delete():
            accounts.delete_user(user_id)
            keyring.user_deleted(user_id)
        return _account_change(delete, f"user {user.name} deleted", _("User deleted."))
    if action == "unlock":
        return _account_change(lambda: accounts.update_user(user_id, unlock=True),
                               f"wrong-password delay of {user.name} cleared", _("{name} may try again now.", name=user.name))
    if action == "second_factor_off":
        return _account_change(lambda: accounts.clear_second_factor(user_id), f"second factor of {user.name} turned off",
                               _("{name} logs in with the password only.", name=user.name))
    if action == "password":
        own = session.get("sid") if user_id == current().id else None
        password = form.get("password", "")

        def reset():
            accounts.update_user(user_id, password=password, keep_session=own)
            keyring.password_set(user_id, password)
        return _account_change(reset, f"password of {user.name} reset", _("Password changed."))
    if action == "end_sessions":
        own = session.get("sid") if user_id == current().id else None
        return _account_change(lambda: accounts.end_sessions(user_id, keep=own), f"sessions of {user.name} ended",
                               _("{name} is logged out everywhere.", name=user.name))
    return _account_change(lambda: accounts.update_user(user_id, role=form.get("role"), lines=_lines_field()),
                           f"user {user.name} now {form.get('role')}", _("User changed."))


@bp.route("/tokens/add", methods=["POST"])
@require("admin")
@confirmed
def add_token():
    """Create an API token; it is shown once."""
    accounts, form = backend().accounts, request.form
    try:
        token = accounts.add_token(form.get("name", ""), form.get("role", ""), _lines_field(), current().actor)
    except AccountError as exc:
        flash(error_text(exc), "error")
        return redirect(url_for("settings.users"))
    backend().catalogue.add_audit(current().actor, "account", detail=f"API token {form.get('name')} created", address=client_address())
    return _users_page(new_token=token)


@bp.route("/tokens/<int:token_id>/revoke", methods=["POST"])
@require("admin")
@confirmed
def revoke_token(token_id: int):
    """Revoke an API token."""
    return _account_change(lambda: backend().accounts.revoke_token(token_id), f"API token {token_id} revoked",
                           _("Token revoked."))
