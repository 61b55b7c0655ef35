"""The calls: the list with its filters, a call's page with the player, and the actions on a call
(notes, agreement, hold, release, delete). Audio and downloads are read only from the archive."""

import threading
import time
from datetime import date, datetime, time as dtime, timedelta

from flask import Blueprint, Response, abort, current_app, flash, redirect, render_template, request, send_file, url_for
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from appliance.store.catalogue import FLAGS, CallFilter
from appliance.store.peaks import peaks_from_levels
from appliance.store.recording import open_recording, plain_size, wav_seconds
from appliance.clock import iso_utc
from appliance.errors import CallrecError
from appliance.store.retention import StoreActionError
from appliance.store.sealing import StoreLocked
from web.backend import backend
from web.exports import ExportRefused
from web.i18n import error_text, gettext as _
from web.restriction import openings, refuse_if_restricted
from web.sealed import sealed_filter, shown_call, shown_calls, shown_digits
from web.security import client_address, current, require, visible_call, visible_lines
from web.waveform import decode_peaks, waveform_svg

bp = Blueprint("calls", __name__)

PAGE = 50
DIRECTIONS = ("incoming", "outgoing", "unknown")
MAX_NOTES = 4000


FILTER_KEYS = ("q", "since", "until", "line", "direction", "number", "purpose", "min_s", "max_s", "flag")
MAX_PAGE = 100_000


def page_number(args) -> int:
    """The page asked for, 1 to MAX_PAGE whatever was sent."""
    try:
        return min(max(1, int(args.get("page", "1"))), MAX_PAGE)
    except ValueError:
        return 1


def known_args(args, keys) -> dict[str, list[str]]:
    """The query's filters that the page knows, for its links to other pages of the same list."""
    return {key: args.getlist(key) for key in keys if key in args}


FIRST_DAY, LAST_DAY = date(1970, 1, 2), date(9999, 12, 30)


class BadFilter(ValueError):
    """A filter value that cannot be understood; its message says which."""


def _day(text: str, field: str) -> date:
    """A local day (YYYY-MM-DD); one far before or after any call counts as the first or last day
    the clock can convert, which selects the same calls."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise BadFilter(_("{field}: not a date (YYYY-MM-DD)", field=field)) from None
    return min(max(day, FIRST_DAY), LAST_DAY)


def _day_start(day: date) -> str:
    """The start of a local day as the catalogue's UTC timestamps are written."""
    return iso_utc(datetime.combine(day, dtime()).astimezone().timestamp())


def call_query(args, principal) -> tuple[CallFilter, dict]:
    """The calls the list's filters in `args` select (and the filters as understood). Dates are
    the shop's local days; `until` includes its whole day."""
    shown, chosen = {}, {}
    if since := args.get("since", "").strip():
        chosen["since"] = _day_start(_day(since, "since"))
        shown["since"] = since
    if until := args.get("until", "").strip():
        chosen["until"] = _day_start(_day(until, "until") + timedelta(days=1))
        shown["until"] = until
    for key in ("line", "direction", "number", "purpose"):
        if value := args.get(key, "").strip():
            chosen[key] = shown[key] = value
    if chosen.get("direction", DIRECTIONS[0]) not in DIRECTIONS:
        raise BadFilter(_("direction: one of incoming, outgoing, unknown"))
    for key in ("min_s", "max_s"):
        if text := args.get(key, "").strip():
            try:
                chosen[key] = float(text)
            except ValueError:
                raise BadFilter(_("{field}: not a number of seconds", field=key)) from None
            shown[key] = text
    flags = args.getlist("flag")
    if any(flag not in FLAGS for flag in flags):
        raise BadFilter(_("flag: one of held, restricted, agreement, interrupted"))
    if flags:
        shown["flag"] = flags
    if q := args.get("q", "").strip():
        chosen["text"] = shown["q"] = q
    try:
        return sealed_filter(CallFilter(lines=visible_lines(principal), flags=tuple(flags), **chosen)), shown
    except StoreLocked:
        raise BadFilter(_("The store is locked: calls are found by number or name once a login has unlocked it.")) from None


def find_calls(args, principal, limit: int, offset: int = 0) -> tuple[list[dict], dict]:
    """The calls matching the filters in `args`, newest first (one more than `limit` if there are more)."""
    which, shown = call_query(args, principal)
    return backend().catalogue.find_calls(which, limit + 1, offset), shown


def selection(args, principal) -> list[dict]:
    """The calls with a recording that the list's filters in `args` select, newest first: what a
    bulk export of the list takes."""
    which, _shown = call_query(args, principal)
    return [call for call in backend().catalogue.find_calls(which) if call["file"]]


@bp.route("/")
def index():
    """The newest calls first, filtered and paged."""
    page = page_number(request.args)
    config = backend().config
    principal = current()
    lines = [name for name in config.line_names if principal.may_see(name)]
    try:
        rows, shown = find_calls(request.args, principal, PAGE, (page - 1) * PAGE)
        error = None
    except BadFilter as exc:
        rows, shown, error = [], {}, str(exc)
    more = len(rows) > PAGE
    return render_template("calls.html", calls=shown_calls(rows[:PAGE]), shown=shown, page=page, more=more, error=error,
                           filters=known_args(request.args, FILTER_KEYS),
                           lines=lines, purposes=sorted(config.purpose), flags=list(FLAGS),
                           directions=DIRECTIONS), 400 if error else 200


@bp.route("/calls/<int:call_id>")
def detail(call_id: int):
    """A call's page: player, waveform, details, notes, actions."""
    call = visible_call(call_id)
    catalogue = backend().catalogue
    store = backend().store
    expires = store.expires_at(call)
    return render_template("call.html", call=shown_call(call), digits=shown_digits(catalogue.digits(call_id)),
                           pauses=catalogue.pauses(call_id), expires=expires,
                           purposes=sorted(backend().config.purpose), playable=openings().allows(current(), call),
                           locked=backend().locked)


def archived_file(call: dict):
    """The call's recording, checked to lie inside the archive (404 when there is none)."""
    if not call["file"]:
        abort(404, description=_("This call has no recording."))
    data_dir = backend().data_dir.resolve()
    path = (data_dir / call["file"]).resolve()
    if not path.is_relative_to(data_dir / "archive") or not path.is_file():
        abort(404, description=_("This call has no recording."))
    return path


MIMETYPES = {".opus": "audio/ogg", ".ogg": "audio/ogg", ".flac": "audio/flac", ".wav": "audio/wav"}


LISTEN_AUDIT_S = 600            # a player's range requests within this time are one listen


class RecentListens:
    """Who listened to which call lately, so that a player's seeks are not each a new listen."""

    def __init__(self):
        self._lock = threading.Lock()
        self._last: dict[tuple[str, int], float] = {}

    def first(self, principal, call_id: int) -> bool:
        """Whether this request starts a listen (not a seek within one already audited)."""
        now = time.monotonic()
        with self._lock:
            for key in [k for k, t in self._last.items() if now - t > LISTEN_AUDIT_S]:
                del self._last[key]
            first = (principal.key, call_id) not in self._last
            self._last[(principal.key, call_id)] = now
        return first


def send_recording(call: dict, as_attachment: bool, principal) -> Response:
    """The recording, in the clear even when it is sealed on the disk (423 while the store is
    locked), with Range support; a download is audited every time, a listen once per quarter of an
    hour of seeking (whatever ranges the player asks for). A restricted call is refused unless an
    admin opened it."""
    refuse_if_restricted(call, principal)
    path = archived_file(call)
    recording = open_recording(path, backend().reading())
    if as_attachment or current_app.extensions["listens"].first(principal, call["id"]):
        backend().catalogue.add_audit(principal.actor, "download" if as_attachment else "listen", call["id"],
                                      path.name, client_address())
    size, stat = plain_size(recording), path.stat()
    response = send_file(recording, mimetype=MIMETYPES.get(path.suffix, "application/octet-stream"),
                         as_attachment=as_attachment, download_name=path.name, conditional=False,
                         etag=f"{stat.st_mtime}-{stat.st_size}", last_modified=stat.st_mtime, max_age=0)
    response.content_length = size
    try:
        response.make_conditional(request, accept_ranges=True, complete_length=size)
    except RequestedRangeNotSatisfiable:
        recording.close()
        raise
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.route("/calls/<int:call_id>/audio")
def audio(call_id: int):
    """The recording for the player (HTTP Range requests for seeking)."""
    return send_recording(visible_call(call_id), False, current())


@bp.route("/calls/<int:call_id>/download")
def download(call_id: int):
    """The recording as a file, byte for byte as archived."""
    return send_recording(visible_call(call_id), True, current())


@bp.route("/calls/<int:call_id>/waveform.svg")
def waveform(call_id: int):
    """A picture of the recording's loudness over time."""
    call = visible_call(call_id)
    catalogue = backend().catalogue
    levels = catalogue.peaks_of(call_id)
    if levels is None:          # archived before peaks were kept, or sealed after a crash: decode it this once
        with open_recording(archived_file(call), backend().reading()) as recording:
            duration = call["duration_s"] or wav_seconds(recording)
            levels = peaks_from_levels(decode_peaks(recording, duration))
        catalogue.set_peaks(call_id, levels)
    response = Response(waveform_svg(levels), mimetype="image/svg+xml")
    response.headers["Cache-Control"] = "private, no-store"
    return response


def _act(call_id: int, action, done: str):
    """Run a store action on a visible call; its error becomes a message, not a crash."""
    call = visible_call(call_id)
    try:
        action(call)
        flash(done)
    except CallrecError as exc:
        flash(error_text(exc), "error")
    return redirect(url_for("calls.detail", call_id=call_id))


def save_notes(call: dict, text: str, principal, address: str) -> None:
    """Replace a call's notes (empty: none), checked and audited; the UI and the API both save here."""
    if len(text) > MAX_NOTES:
        raise StoreActionError("Notes are limited to {n} characters.", n=MAX_NOTES)
    backend().catalogue.set_notes(call["id"], text.strip() or None, principal.actor, address)


@bp.route("/calls/<int:call_id>/notes", methods=["POST"])
@require("supervisor")
def notes(call_id: int):
    """Save the call's notes (searchable from the list)."""
    text = request.form.get("notes", "")
    return _act(call_id, lambda call: save_notes(call, text, current(), client_address()), _("Notes saved."))


@bp.route("/calls/<int:call_id>/agreement", methods=["POST"])
@require("supervisor")
def agreement(call_id: int):
    """Keep the call as the evidence of an agreement (its purpose becomes `agreement`)."""
    return _act(call_id, lambda call: backend().store.classify(call["id"], "agreement", current().actor,
                                                               client_address()),
                _("Marked as an agreement."))


@bp.route("/calls/<int:call_id>/purpose", methods=["POST"])
@require("supervisor")
def purpose(call_id: int):
    """Give the call another purpose (which sets how long it is kept)."""
    chosen = request.form.get("purpose", "")
    return _act(call_id, lambda call: backend().store.classify(call["id"], chosen, current().actor,
                                                               client_address()),
                _("Purpose changed."))


@bp.route("/calls/<int:call_id>/hold", methods=["POST"])
@require("supervisor")
def hold(call_id: int):
    """Put the call on hold: never deleted until released."""
    reason = request.form.get("reason", "")
    return _act(call_id, lambda call: backend().store.hold(call["id"], reason, current().actor, client_address()),
                _("The call is on hold."))


@bp.route("/calls/<int:call_id>/release", methods=["POST"])
@require("supervisor")
def release(call_id: int):
    """End the hold: the call's retention applies again."""
    return _act(call_id, lambda call: backend().store.release(call["id"], current().actor, client_address()),
                _("The hold is released."))


@bp.route("/calls/<int:call_id>/restrict", methods=["POST"])
@require("supervisor")
def restrict(call_id: int):
    """Restrict the call (GDPR Art. 18): kept, never deleted, and not played until lifted."""
    reason = request.form.get("reason", "")
    return _act(call_id, lambda call: backend().store.restrict(call["id"], reason, current().actor, client_address()),
                _("The call is restricted."))


@bp.route("/calls/<int:call_id>/lift-restriction", methods=["POST"])
@require("admin")
def lift_restriction(call_id: int):
    """End the call's restriction."""
    return _act(call_id, lambda call: backend().store.lift_restriction(call["id"], current().actor, client_address()),
                _("The restriction is lifted."))


@bp.route("/calls/<int:call_id>/delete", methods=["POST"])
@require("admin")
def delete(call_id: int):
    """Erase the call: the recording and the row; a tombstone and an audit entry remain."""
    call = visible_call(call_id)
    if request.form.get("confirm") != "yes":
        abort(400, description=_("Confirm the deletion."))
    try:
        backend().store.erase(call["id"], current().actor, request.form.get("reason") or "deleted in the web UI",
                              client_address())
    except CallrecError as exc:
        flash(error_text(exc), "error")
        return redirect(url_for("calls.detail", call_id=call_id))
    current_app.extensions["exports"].forget_calls({call_id})
    flash(_("Call {id} is erased.", id=call_id))
    return redirect(url_for("calls.index"))


@bp.route("/export")
@require("supervisor")
def export_selection():
    """What a bulk export of the list's calls would hold (how many, how large), and the button that starts it."""
    try:
        chosen = selection(request.args, current())
        error = None
    except BadFilter as exc:
        chosen, error = [], str(exc)
    size = backend().catalogue.size_of([call["id"] for call in chosen]) if chosen else 0
    return render_template("export_selection.html", count=len(chosen), size=size, error=error,
                           filters=known_args(request.args, FILTER_KEYS)), 400 if error else 200


@bp.route("/export", methods=["POST"])
@require("supervisor")
def start_export():
    """Start one signed bundle of the calls the list's filters select (the filters are sent again:
    the selection is made now, with the principal's lines)."""
    try:
        chosen = selection(request.form, current())
    except BadFilter as exc:
        abort(400, description=str(exc))
    filters = known_args(request.form, FILTER_KEYS)
    if not chosen:
        flash(_("No recordings match these filters."), "error")
        return redirect(url_for("calls.export_selection", **filters))
    try:
        job = current_app.extensions["exports"].start([call["id"] for call in chosen], current(), client_address())
    except ExportRefused as exc:
        flash(error_text(exc), "error")
        return redirect(url_for("calls.export_selection", **filters))
    return redirect(url_for("privacy.export_page", job_id=job.id))
