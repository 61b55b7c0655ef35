"""First-run setup with the one-time code, login (throttled, with an optional second factor) and
logout, confirming one's password before a sensitive change, one's own password and second factor,
and the language switcher."""

import time
from functools import wraps
from urllib.parse import urlparse

from flask import (Blueprint, current_app, flash, g, redirect, render_template, request, session,
                   url_for)
from itsdangerous import BadSignature, URLSafeSerializer

from web import keyring
from web.accounts import AccountError
from web.backend import backend
from web.i18n import LANG_COOKIE, LANGUAGES, error_text
from web.i18n import gettext as _
from web.security import client_address, current, session_idle_s, session_lifetime_s

bp = Blueprint("auth", __name__)

DEVICE_COOKIE = "callrec_device"
DEVICE_NAMES = 5                 # the names a browser remembers having logged in to
CONFIRM_S = 10 * 60              # a password typed this recently confirms a sensitive change
SECOND_FACTOR_S = 5 * 60         # the time to type the code once the password was right
SETUP_THROTTLE_NAME = "(setup code)"


def _devices() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.secret_key, salt="known-device")


def _known_names() -> list[str]:
    """The names this browser has logged in to before (from its signed device cookie)."""
    try:
        names = _devices().loads(request.cookies.get(DEVICE_COOKIE, ""))
    except BadSignature:
        return []
    return names if isinstance(names, list) else []


def _remember_device(response, name: str):
    names = [name.lower()] + [n for n in _known_names() if n != name.lower()]
    response.set_cookie(DEVICE_COOKIE, _devices().dumps(names[:DEVICE_NAMES]), max_age=365 * 86400,
                        secure=request.is_secure, httponly=True, samesite="Strict")
    return response


def _start_session(user) -> None:
    session.clear()
    session.permanent = True
    session["sid"] = backend().accounts.start_session(user.id, client_address(), request.user_agent.string,
                                                      session_idle_s(), session_lifetime_s())
    session["confirmed_at"] = time.time()


def _safe_next(target: str | None) -> str:
    """Only a path on this site: a login link must not send the user elsewhere."""
    if target and target.startswith("/") and not target.startswith("//") and not urlparse(target).netloc:
        return target
    return url_for("calls.index")


def _wait_text(seconds: float) -> str:
    return _("Too many wrong tries: wait {n} seconds, then try again.", n=max(1, round(seconds + 0.5)))


def _password_checked(name: str, password: str):
    """The user whose name and password these are, through the throttle; or the error to show."""
    accounts, address = backend().accounts, client_address()
    wait = accounts.throttle.wait_s(name, address, known_device=name.lower() in _known_names())
    if wait > 0:
        return None, _wait_text(wait)
    accounts.throttle.attempt(name, address)
    try:
        user = accounts.authenticate(name, password)
    except AccountError as exc:
        backend().catalogue.add_audit(f"user:{name[:64]}", "login-failed", detail=str(exc), address=address)
        return None, error_text(exc)
    return user, None


@bp.route("/setup", methods=["GET", "POST"])
def setup():
    """Create the first admin, with the setup code the appliance printed."""
    accounts = backend().accounts
    if not accounts.needs_setup():
        return redirect(url_for("auth.login"))
    error = None
    if request.method == "POST":
        form = request.form
        wait = accounts.throttle.wait_s(SETUP_THROTTLE_NAME, client_address())
        if wait > 0:
            error = _wait_text(wait)
        elif form.get("password") != form.get("confirm"):
            error = _("The two passwords differ.")
        else:
            accounts.throttle.attempt(SETUP_THROTTLE_NAME, client_address())
            try:
                # Checked before the admin is made: a mistyped recovery key changes nothing.
                secret = keyring.recovery_secret(form.get("recovery", "")) if keyring.needs_recovery_key() else None
                user = accounts.complete_setup(form.get("code", ""), form.get("name", ""), form.get("password", ""))
            except AccountError as exc:
                error = error_text(exc)
            else:
                backend().catalogue.add_audit(user.actor, "setup", detail="first admin created", address=client_address())
                if secret is not None:
                    keyring.unlock_with_recovery(secret, user, form["password"], client_address())
                _start_session(user)
                return _remember_device(redirect(url_for("calls.index")), user.name)
    return render_template("setup.html", error=error, recovery=keyring.needs_recovery_key()), 400 if error else 200


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Log in: wrong passwords slow further tries down (per address, per name from it, per name)."""
    accounts = backend().accounts
    if accounts.needs_setup():
        return redirect(url_for("auth.setup"))
    error = None
    if request.method == "POST":
        name, password = request.form.get("name", ""), request.form.get("password", "")
        user, error = _password_checked(name, password)
        if user is not None:
            if accounts.second_factor(user.id):
                session.clear()
                session["pending"] = {"user": user.id, "since": time.time(), "next": request.args.get("next"),
                                      "key": keyring.hold_password(password, SECOND_FACTOR_S)}
                return redirect(url_for("auth.code"))
            return _logged_in(user, request.args.get("next"), password)
    return render_template("login.html", error=error), 401 if error else 200


def _logged_in(user, next_path: str | None, password: str | None):
    backend().accounts.throttle.succeeded(user.name, client_address())
    _start_session(user)
    backend().catalogue.add_audit(user.actor, "login", address=client_address())
    if password is not None:
        keyring.logged_in(user, password, client_address())
    return _remember_device(redirect(_safe_next(next_path)), user.name)


@bp.route("/login/code", methods=["GET", "POST"])
def code():
    """The second step of a login with a second factor: the code of the authenticator app."""
    accounts, pending = backend().accounts, session.get("pending")
    if not pending or time.time() - pending["since"] > SECOND_FACTOR_S:
        session.pop("pending", None)
        return redirect(url_for("auth.login"))
    user = accounts.user(pending["user"])
    if user is None:
        return redirect(url_for("auth.login"))
    error = None
    if request.method == "POST":
        wait = accounts.throttle.wait_s(user.name, client_address(), known_device=user.name.lower() in _known_names())
        if wait > 0:
            error = _wait_text(wait)
        else:
            accounts.throttle.attempt(user.name, client_address())
            if accounts.check_second_factor(user.id, request.form.get("code", "")):
                return _logged_in(user, pending.get("next"), keyring.held_password(pending.get("key")))
            backend().catalogue.add_audit(user.actor, "login-failed", detail="wrong second-factor code",
                                          address=client_address())
            error = _("The code is wrong or was used already: type the one your app shows now.")
    return render_template("code.html", error=error), 401 if error else 200


@bp.route("/logout", methods=["POST"])
def logout():
    """End the session, on the appliance too: its cookie is worth nothing afterwards."""
    if "sid" in session:
        backend().accounts.end_session(session["sid"])
    session.clear()
    flash(_("You are logged out."))
    return redirect(url_for("auth.login"))


def confirmed(view):
    """A view decorator for sensitive changes (erasure, settings, users): the user must have typed
    their password in the last CONFIRM_S, else they are asked for it first. API tokens are not asked."""
    @wraps(view)
    def wrapper(*args, **kwargs):
        principal = current()
        if principal is not None and principal.kind == "user" and time.time() - session.get("confirmed_at", 0) > CONFIRM_S:
            back = request.full_path if request.method == "GET" else urlparse(request.referrer or "").path
            if request.method != "GET":
                flash(_("Confirm your password, then make the change again."))
            return redirect(url_for("auth.confirm", next=back or None))
        return view(*args, **kwargs)
    return wrapper


@bp.route("/confirm", methods=["GET", "POST"])
def confirm():
    """Type one's password again before a sensitive change."""
    principal = current()
    error = None
    if request.method == "POST":
        user, error = _password_checked(principal.name, request.form.get("password", ""))
        if user is not None and user.id == principal.id:
            backend().accounts.throttle.succeeded(user.name, client_address())
            session["confirmed_at"] = time.time()
            return redirect(_safe_next(request.args.get("next")))
    return render_template("confirm.html", error=error), 401 if error else 200


@bp.route("/account", methods=["GET", "POST"])
def account():
    """One's own account: change the password; turn the second factor on or off."""
    principal, accounts = current(), backend().accounts
    if principal.kind != "user":
        return redirect(url_for("calls.index"))
    error = enrolment = None
    if request.method == "POST":
        action = request.form.get("action")
        user, error = _password_checked(principal.name, request.form.get("current", ""))
        if user is not None:
            accounts.throttle.succeeded(user.name, client_address())
            try:
                error = _account_action(action, principal)
            except AccountError as exc:
                error = error_text(exc)
            if error is None and action in ("password", "second-factor-off", "second-factor-on"):
                return redirect(url_for("auth.account"))
    if session.get("enrolling"):
        enrolment = accounts.enrolment(principal.name, session["enrolling"])
    return render_template("account.html", error=error, enrolment=enrolment,
                           second_factor=accounts.second_factor(principal.id)), 400 if error else 200


def _account_action(action: str | None, principal) -> str | None:
    accounts, form = backend().accounts, request.form
    if action == "password":
        if form.get("password") != form.get("confirm"):
            return _("The two passwords differ.")
        accounts.update_user(principal.id, password=form.get("password", ""), keep_session=session.get("sid"))
        keyring.password_set(principal.id, form["password"])
        backend().catalogue.add_audit(principal.actor, "password-changed", address=client_address())
        flash(_("Your password is changed; your other sessions are logged out."))
    elif action == "second-factor-start":
        session["enrolling"] = accounts.new_second_factor_secret()
    elif action == "second-factor-on":
        accounts.set_second_factor(principal.id, session.get("enrolling", ""), form.get("code", ""))
        session.pop("enrolling", None)
        backend().catalogue.add_audit(principal.actor, "second-factor-on", address=client_address())
        flash(_("Logging in now asks for a code from your authenticator app."))
    elif action == "second-factor-off":
        accounts.clear_second_factor(principal.id)
        backend().catalogue.add_audit(principal.actor, "second-factor-off", address=client_address())
        flash(_("Logging in asks for your password only."))
    return None


@bp.route("/language/<lang>")
def language(lang: str):
    """Switch the UI's language (kept in a cookie, and on the user's account when logged in)."""
    if lang not in LANGUAGES:
        return redirect(url_for("calls.index"))
    if g.get("principal") is not None and g.principal.kind == "user":
        backend().accounts.update_user(g.principal.id, language=lang)
    response = redirect(_safe_next(request.args.get("next")))
    response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="Lax", secure=request.is_secure,
                        httponly=True)
    return response
