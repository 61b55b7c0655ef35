"""The JSON API for a CRM: calls, a call, its audio, signed exports and the do-not-record list, with token authentication
(`Authorization: Bearer …`, tokens made on the users page), described by `/api/openapi.json`."""

from flask import Blueprint, abort, jsonify, request, send_file, url_for
from werkzeug.exceptions import HTTPException

from appliance.errors import CallrecError
from appliance.store.catalogue import public_fields
from web.backend import backend
from web.calls import BadFilter, find_calls, send_recording
from web.exports import ExportRefused
from web.openapi import document
from web.privacy import calls_of, exports
from web.security import current, visible_call

bp = Blueprint("api", __name__, url_prefix="/api")

MAX_LIMIT = 500


@bp.errorhandler(HTTPException)
def _error(exc: HTTPException):
    return jsonify(error=exc.description or exc.name), exc.code


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    text = request.args.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        abort(400, description=f"{name}: a whole number")
    if not low <= value <= high:
        abort(400, description=f"{name}: between {low} and {high}")
    return value


@bp.route("/openapi.json")
def openapi():
    """The OpenAPI document of this API."""
    return jsonify(document(request.host_url.rstrip("/")))


@bp.route("/v1/calls")
def calls():
    """Calls, newest first, with the same filters as the calls page."""
    limit = _int_arg("limit", 50, 1, MAX_LIMIT)
    offset = _int_arg("offset", 0, 0, 10_000_000)
    try:
        rows, _ = find_calls(request.args, current(), limit, offset)
    except BadFilter as exc:
        abort(400, description=str(exc))
    return jsonify(calls=[public_fields(row) for row in rows[:limit]], more=len(rows) > limit)


@bp.route("/v1/calls/<int:call_id>")
def call(call_id: int):
    """One call with its digits and pauses."""
    row = visible_call(call_id)
    catalogue = backend().catalogue
    return jsonify(**public_fields(row),
                   digits=[{"offset_s": o, "key": k} for o, k in catalogue.digits(call_id)],
                   pauses=[{"start_s": s, "end_s": e, "reason": r} for s, e, r in catalogue.pauses(call_id)],
                   audio_url=url_for("api.audio", call_id=call_id) if row["file"] else None)


@bp.route("/v1/calls/<int:call_id>/audio")
def audio(call_id: int):
    """The recording, byte for byte as archived (Range requests supported)."""
    return send_recording(visible_call(call_id), True, current())


@bp.route("/v1/exports", methods=["POST"])
def start_export():
    """Start a signed bundle of the given calls, or of every call of a number."""
    if not current().at_least("supervisor"):
        abort(403, description="exports need a supervisor or admin token")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        abort(400, description="send a JSON object with call_ids (a list of call ids) or number")
    if "number" in body:
        if not isinstance(body["number"], str) or not body["number"].strip():
            abort(400, description="number: a phone number")
        ids = [c["id"] for c in calls_of(body["number"].strip()) if c["file"]]
    elif isinstance(body.get("call_ids"), list) and body["call_ids"] and all(
            isinstance(i, int) and not isinstance(i, bool) for i in body["call_ids"]):
        ids = sorted(set(body["call_ids"]))
        for call_id in ids:
            if not visible_call(call_id)["file"]:
                abort(400, description=f"call {call_id} has no recording to export")
    else:
        abort(400, description="call_ids: a non-empty list of call ids")
    if not ids:
        abort(404, description="no recordings to export")
    try:
        job = exports().start(ids, current(), request.remote_addr)
    except ExportRefused as exc:
        abort(409, description=str(exc))
    return jsonify(**job.public(), status_url=url_for("api.export_status", job_id=job.id)), 202


@bp.route("/v1/calls/<int:call_id>/rectify", methods=["POST"])
def rectify(call_id: int):
    """Correct a call's number and/or its caller's name."""
    if not current().at_least("supervisor"):
        abort(403, description="corrections need a supervisor or admin token")
    row = visible_call(call_id)
    body = request.get_json(silent=True)
    fields = ("number", "contact_name")
    if (not isinstance(body, dict) or not body or set(body) - set(fields)
            or not all(isinstance(body[name], str) for name in body)):
        abort(400, description="send a JSON object with number and/or contact_name (text)")
    try:
        changed = backend().store.rectify(row["id"], current().actor, body.get("number"), body.get("contact_name"),
                                          request.remote_addr, backend().config.recorder.country_code)
    except CallrecError as exc:
        abort(400, description=str(exc))
    return jsonify(changed=changed, call=public_fields(backend().catalogue.get_call(row["id"])))


def _number_body() -> dict:
    """The JSON body of a do-not-record change, checked; only supervisors and admins change the list."""
    if not current().at_least("supervisor"):
        abort(403, description="the do-not-record list needs a supervisor or admin token")
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("number"), str) or not body["number"].strip():
        abort(400, description="send a JSON object with number (a phone number)")
    if not isinstance(body.get("note", ""), (str, type(None))) or set(body) - {"number", "note"}:
        abort(400, description="number and note (text) only")
    return body


@bp.route("/v1/do-not-record")
def do_not_record():
    """The do-not-record list: each number's last digits only, when, by whom, the note."""
    if not current().at_least("supervisor"):
        abort(403, description="the do-not-record list needs a supervisor or admin token")
    return jsonify(entries=[{k: e[k] for k in ("hint", "added_at", "added_by", "note")}
                            for e in backend().objections.entries()])


@bp.route("/v1/do-not-record", methods=["POST"])
def object_to_recording():
    """Put a number on the do-not-record list."""
    body = _number_body()
    try:
        added = backend().objections.add(body["number"], current().actor, body.get("note") or None,
                                         request.remote_addr)
    except CallrecError as exc:
        abort(400, description=str(exc))
    return jsonify(added=added), 201 if added else 200


@bp.route("/v1/do-not-record/remove", methods=["POST"])
def record_again():
    """Take a number off the do-not-record list."""
    body = _number_body()
    try:
        removed = backend().objections.remove(body["number"], current().actor, request.remote_addr)
    except CallrecError as exc:
        abort(400, description=str(exc))
    if not removed:
        abort(404, description="this number is not on the do-not-record list")
    return jsonify(removed=True)


def _job(job_id: str):
    job = exports().get(job_id, current())
    if job is None:
        abort(404, description="no such export (bundles are kept for an hour)")
    return job


@bp.route("/v1/exports/<job_id>")
def export_status(job_id: str):
    """An export's progress; when ready, where to fetch the bundle."""
    job = _job(job_id)
    extra = {"bundle_url": url_for("api.export_bundle", job_id=job_id)} if job.state == "ready" else {}
    return jsonify(**job.public(), **extra)


@bp.route("/v1/exports/<job_id>/bundle")
def export_bundle(job_id: str):
    """The finished bundle (a zip that `callrec verify` checks offline)."""
    job = _job(job_id)
    if job.state != "ready":
        abort(409, description=f"the export is {job.state}")
    return send_file(job.path, mimetype="application/zip", as_attachment=True,
                     download_name=f"callrec-export-{job.id}.zip", max_age=0)
