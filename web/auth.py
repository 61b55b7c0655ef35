"""First-run setup with the one-time code, login and logout, and the language switcher."""

from urllib.parse import urlparse

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, session, url_for

from web.accounts import AccountError
from web.backend import backend
from web.i18n import LANG_COOKIE, LANGUAGES, error_text
from web.i18n import gettext as _
from web.security import client_address, session_idle_s

bp = Blueprint("auth", __name__)


def _start_session(user) -> None:
    session.clear()
    session.permanent = True
    session["sid"] = backend().accounts.start_session(user.id, client_address(), request.user_agent.string,
                                                      session_idle_s())


def _safe_next(target: str | None) -> str:
    """Only a path on this site: a login link must not send the user elsewhere."""
    if target and target.startswith("/") and not target.startswith("//") and not urlparse(target).netloc:
        return target
    return url_for("calls.index")


@bp.route("/setup", methods=["GET", "POST"])
def setup():
    """Create the first admin, with the setup code the appliance printed."""
    accounts = backend().accounts
    if not accounts.needs_setup():
        return redirect(url_for("auth.login"))
    error = None
    if request.method == "POST":
        limiter = current_app.extensions["login_limiter"]
        form = request.form
        if limiter.blocked(client_address()):
            error = _("Too many failed attempts from your address: wait 15 minutes.")
        elif form.get("password") != form.get("confirm"):
            error = _("The two passwords differ.")
        else:
            try:
                user = accounts.complete_setup(form.get("code", ""), form.get("name", ""), form.get("password", ""))
            except AccountError as exc:
                limiter.failed(client_address())
                error = error_text(exc)
            else:
                backend().catalogue.add_audit(user.actor, "setup", detail="first admin created", address=client_address())
                _start_session(user)
                return redirect(url_for("calls.index"))
    return render_template("setup.html", error=error), 400 if error else 200


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Log in; wrong passwords are counted per account and per address."""
    accounts = backend().accounts
    if accounts.needs_setup():
        return redirect(url_for("auth.setup"))
    error = None
    if request.method == "POST":
        limiter = current_app.extensions["login_limiter"]
        name = request.form.get("name", "")
        if limiter.blocked(client_address()):
            error = _("Too many failed attempts from your address: wait 15 minutes.")
        else:
            try:
                user = accounts.authenticate(name, request.form.get("password", ""))
            except AccountError as exc:
                limiter.failed(client_address())
                error = error_text(exc)
                backend().catalogue.add_audit(f"user:{name[:64]}", "login-failed", detail=str(exc), address=client_address())
            else:
                _start_session(user)
                backend().catalogue.add_audit(user.actor, "login", address=client_address())
                return redirect(_safe_next(request.args.get("next")))
    return render_template("login.html", error=error), 401 if error else 200


@bp.route("/logout", methods=["POST"])
def logout():
    """End the session, on the appliance too: its cookie is worth nothing afterwards."""
    if "sid" in session:
        backend().accounts.end_session(session["sid"])
    session.clear()
    flash(_("You are logged out."))
    return redirect(url_for("auth.login"))


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
