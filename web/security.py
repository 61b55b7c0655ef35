"""Who is asking, and what they may do: sessions, API tokens, CSRF, roles, per-line access and the
security headers. Applied to every request by `install`.
"""

import secrets
from functools import wraps

from flask import Flask, abort, g, jsonify, redirect, request, session, url_for

from web.accounts import Principal
from web.backend import backend
from web.i18n import gettext as _

PUBLIC_ENDPOINTS = {"auth.login", "auth.code", "auth.setup", "auth.language", "static", "healthz", "certificate",
                    "revocation_list", "api.openapi", "notice.public", "notice.sheet"}
UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
CSP = ("default-src 'self'; img-src 'self' data:; media-src 'self'; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


def csrf_token() -> str:
    """This session's CSRF token, put in every form."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def current() -> Principal | None:
    """The principal of this request (None: anonymous)."""
    return g.get("principal")


def is_api() -> bool:
    """API requests authenticate with a token and never with the session cookie."""
    return request.path.startswith("/api/")


def _load_principal() -> Principal | None:
    accounts = backend().accounts
    if is_api():
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return accounts.token(header[len("Bearer "):].strip())
        return None
    token = session.get("sid")
    if token is None:
        return None
    user = accounts.session_user(token, session_idle_s())
    if user is None:
        session.clear()             # logged out (here or by an admin), idle too long, or the user deleted
    return user


def session_idle_s() -> float:
    """How long a session lasts unused."""
    return backend().config.web.session_hours * 3600


def session_lifetime_s() -> float:
    """How long a session lasts at most, however much it is used."""
    return backend().config.web.session_max_hours * 3600


def same_secret(given: str, expected: str) -> bool:
    """Compare a secret sent by a client in constant time (any text: not only ASCII)."""
    return secrets.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


def _before():
    g.principal = _load_principal()
    if is_api():
        if g.principal is None and request.endpoint not in PUBLIC_ENDPOINTS:
            return jsonify(error="a valid API token is required (Authorization: Bearer …)"), 401
        return None
    if request.method in UNSAFE:
        # Login and setup forms too: another site must not log a browser in, nor lock accounts.
        sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token", "")
        if not sent or "csrf" not in session or not same_secret(sent, session["csrf"]):
            abort(400, description=_("The form has expired or did not come from this site: reload the page and try again."))
    if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
        return None
    if g.principal is None:
        if backend().accounts.needs_setup():
            return redirect(url_for("auth.setup"))
        return redirect(url_for("auth.login", next=request.full_path if request.method == "GET" else None))
    return None


def _headers(response):
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
    if request.is_secure:
        response.headers["Strict-Transport-Security"] = "max-age=31536000"
    if g.get("principal") is not None or request.endpoint in ("auth.login", "auth.setup"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def install(app: Flask) -> None:
    """Check every request; add the security headers to every response."""
    app.before_request(_before)
    app.after_request(_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.globals["current"] = current


def require(role: str):
    """A view decorator: refuse principals below `role` (403)."""
    def decorate(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            principal = current()
            if principal is None:
                abort(401)
            if not principal.at_least(role):
                abort(403, description=_("Your role does not allow this."))
            return view(*args, **kwargs)
        return wrapper
    return decorate


def visible_call(call_id: int) -> dict:
    """The call `call_id` if the principal may see its line; otherwise 404 (whether it exists or
    not is none of their business)."""
    try:
        if not 0 < call_id < 2 ** 63:          # beyond SQLite's integers: no such call either
            raise KeyError(call_id)
        call = backend().catalogue.get_call(call_id)
    except KeyError:
        abort(404, description=_("There is no such call."))
    principal = current()
    if principal is None or not principal.may_see(call["line"]):
        abort(404, description=_("There is no such call."))
    return call


def visible_lines(principal: Principal) -> tuple[str, ...] | None:
    """The lines whose calls the principal may see (None: every line)."""
    if principal.role == "admin" or principal.lines is None:
        return None
    return tuple(principal.lines)


def client_address() -> str:
    """The client's address, for the audit trail and the login throttle."""
    return request.remote_addr or "unknown"
