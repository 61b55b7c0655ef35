"""The web UI on the shop's LAN: find, listen, download, and answer privacy requests.

A Flask application (`create_app`) that reads the store and sends commands to the recorder; it
never touches the hardware. `web.server` serves it over HTTPS in its own process.
"""

import os
import secrets
import threading
from datetime import timedelta
from pathlib import Path

from flask import Flask, abort, g, jsonify, render_template, request, send_file
from werkzeug.exceptions import HTTPException, Locked

from web import api, audit, auth, calls, contacts, live, notice, privacy, restriction, settings, status
from appliance.store.sealing import StoreLocked
from web.backend import Backend
from web.exports import Exports
from web.i18n import gettext as _
from web.i18n import pick_language, template_helpers
from web.security import install
from web.certificate import CRL_NAME, TLS_DIR, to_trust

MAX_UPLOAD_BYTES = 12 * 1024 * 1024
SESSION_COOKIE = "callrec_session"


def _secret_key(folder: Path) -> bytes:
    """The key that signs session cookies, made once per device and readable by the appliance only."""
    path = folder / "secret-key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key)
        return key


def create_app(config_path: Path, secure_cookies: bool = True) -> Flask:
    """The web UI for the appliance configured in `config_path`."""
    app = Flask(__name__)
    the_backend = Backend(config_path)
    app.extensions["callrec"] = the_backend
    web_config = the_backend.config.web
    app.extensions["exports"] = Exports(the_backend, the_backend.exports_dir)
    app.extensions["listens"] = calls.RecentListens()
    app.extensions["openings"] = restriction.Openings()
    app.extensions["status_streams"] = threading.BoundedSemaphore(max(1, web_config.threads // 2))
    app.extensions["live_streams"] = threading.BoundedSemaphore(max(1, web_config.threads // 4))
    app.config.update(
        SECRET_KEY=_secret_key(the_backend.accounts.folder),
        # __Host-: the browser keeps it to this host and HTTPS, whatever another service on the LAN sets.
        SESSION_COOKIE_NAME=f"__Host-{SESSION_COOKIE}" if secure_cookies else SESSION_COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure_cookies,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=web_config.session_hours),
        MAX_CONTENT_LENGTH=MAX_UPLOAD_BYTES,
        SEND_FILE_MAX_AGE_DEFAULT=0,
    )
    install(app)
    for blueprint in (auth.bp, calls.bp, contacts.bp, restriction.bp, privacy.bp, notice.bp, status.bp, settings.bp, audit.bp,
                      api.bp, live.bp):
        app.register_blueprint(blueprint)
    app.context_processor(template_helpers)

    @app.before_request
    def _language():
        principal = g.get("principal")
        g.lang = pick_language(principal.language if principal is not None else None)

    @app.route("/healthz")
    def healthz():
        """For `callrec doctor` and monitoring: the web process answers, and whether the recorder runs."""
        return jsonify(ok=True, recorder_running=the_backend.live() is not None)

    @app.route("/certificate.crt")
    def certificate():
        """The certificate to install as trusted on the shop's computers and phones (the appliance's
        own authority, after comparing its fingerprint with the one `callrec doctor` prints)."""
        path = to_trust(the_backend.accounts.folder / TLS_DIR)
        if not path.is_file():
            abort(404)
        return send_file(path, mimetype="application/x-x509-ca-cert", as_attachment=True,
                         download_name=f"{web_config.hostname}.crt")

    @app.route("/ca.crl")
    def revocation_list():
        """The appliance's authority's revocation list (the server certificates it has replaced)."""
        path = the_backend.accounts.folder / TLS_DIR / CRL_NAME
        if not path.is_file():
            abort(404)
        return send_file(path, mimetype="application/pkix-crl", max_age=3600)

    @app.errorhandler(HTTPException)
    def _error(exc: HTTPException):
        if request.path.startswith("/api/"):
            return jsonify(error=exc.description or exc.name), exc.code
        if not hasattr(g, "lang"):
            g.lang = "en"
        own = exc.description != type(exc).description
        return render_template("error.html", error=exc,
                               description=exc.description if own else plain_description(exc.code)), exc.code

    @app.errorhandler(StoreLocked)
    def _locked(exc: StoreLocked):
        return _error(Locked(_("The store is locked since start-up: the login of a user who holds a key to it "
                               "unlocks it.")))

    return app


def plain_description(code: int | None) -> str:
    """What a page says of an error raised without a description of its own (werkzeug's are
    English only, and written for developers)."""
    descriptions = {
        400: _("The request could not be understood. Go back and try again."),
        401: _("Log in to see this page."),
        403: _("Your role does not allow this."),
        404: _("There is no such page. It may have been erased, or the address is mistyped."),
        405: _("This page cannot be used this way. Go back and use its buttons."),
        413: _("The upload is too large."),
    }
    return descriptions.get(code, _("Something went wrong on the appliance. Its log says what; the recording goes on."))
