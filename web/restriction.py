"""Restricted calls (GDPR Art. 18) in the web UI (restricting and lifting are call actions, in
`web.calls`): a restricted call is listed and kept, but nobody
plays, downloads or exports it except an admin who gives a reason, and then only for a quarter of
an hour; each such opening is audited with its reason. API tokens never open one."""

import threading
import time

from flask import Blueprint, abort, current_app, flash, redirect, request, url_for

from web.backend import backend
from web.i18n import gettext as _
from web.security import client_address, current, require, visible_call

bp = Blueprint("restriction", __name__)

OPEN_S = 900            # how long an admin's reason opens a restricted call for them


class Openings:
    """Which admin opened which restricted call, until when."""

    def __init__(self):
        self._lock = threading.Lock()
        self._until: dict[tuple[str, int], float] = {}

    def grant(self, principal, call_id: int) -> None:
        """Open a restricted call to this admin for OPEN_S seconds."""
        with self._lock:
            self._until[(principal.key, call_id)] = time.monotonic() + OPEN_S

    def allows(self, principal, call: dict) -> bool:
        """Whether this principal may play, download or export the call now."""
        if not call.get("restricted"):
            return True
        with self._lock:
            until = self._until.get((principal.key, call["id"]), 0.0)
        return principal.at_least("admin") and time.monotonic() < until


def openings() -> Openings:
    """The web process's openings of restricted calls."""
    return current_app.extensions["openings"]


def refuse_if_restricted(call: dict, principal) -> None:
    """Abort with 403 and the reason when the principal may not have the call's audio."""
    if not openings().allows(principal, call):
        abort(403, description=_("Call {id} is restricted (GDPR Art. 18): only an admin who gives a reason may "
                                 "play, download or export it.", id=call["id"]))


def _back(call_id: int):
    return redirect(url_for("calls.detail", call_id=call_id))


@bp.route("/calls/<int:call_id>/open", methods=["POST"])
@require("admin")
def open_restricted(call_id: int):
    """Open a restricted call to this admin for a quarter of an hour, for the reason given (audited)."""
    call = visible_call(call_id)
    reason = request.form.get("reason", "").strip()
    if not call["restricted"]:
        return _back(call_id)
    if not reason or len(reason) > 500:
        flash(_("Give the reason you need this restricted call (at most 500 characters)."), "error")
        return _back(call_id)
    backend().catalogue.add_audit(current().actor, "open-restricted", call["id"], reason, client_address())
    openings().grant(current(), call["id"])
    flash(_("Open to you for {minutes} minutes.", minutes=OPEN_S // 60))
    return _back(call_id)
