"""The JSON API for a CRM: calls, a call, its audio, its notes, purpose and hold, signed exports, the contacts
and the do-not-record list, with token authentication
(`Authorization: Bearer …`, tokens made on the users page), described by `/api/openapi.json`."""

from dataclasses import asdict

from flask import Blueprint, abort, jsonify, request, send_file, url_for
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import HTTPException

from appliance.errors import CallrecError
from appliance.store.catalogue import public_fields
from appliance.store.sealing import StoreLocked
from web.backend import backend
from appliance.store.directory import DuplicateContact
from web.calls import FILTER_KEYS, BadFilter, call_query, find_calls, save_notes, selection, send_recording
from web.contacts import csv_response
from web.exports import ExportRefused
from web.openapi import document
from web.privacy import calls_of, exports
from web.sealed import shown_call, shown_calls, shown_digits
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
    return jsonify(document(request.host_url.rstrip("/"), sorted(backend().config.purpose)))


@bp.route("/v1/calls")
def calls():
    """Calls, newest first, with the same filters as the calls page."""
    limit = _int_arg("limit", 50, 1, MAX_LIMIT)
    offset = _int_arg("offset", 0, 0, 10_000_000)
    backend().reading()
    try:
        rows, _ = find_calls(request.args, current(), limit, offset)
    except BadFilter as exc:
        abort(400, description=str(exc))
    return jsonify(calls=[public_fields(row) for row in shown_calls(rows[:limit])], more=len(rows) > limit)


@bp.route("/v1/calls/<int:call_id>")
def call(call_id: int):
    """One call with its digits and pauses."""
    row = visible_call(call_id)
    catalogue = backend().catalogue
    backend().reading()
    return jsonify(**public_fields(shown_call(row)),
                   digits=[{"offset_s": o, "key": k} for o, k in shown_digits(catalogue.digits(call_id))],
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
        abort(400, description="send a JSON object with call_ids (a list of call ids), number or filter")
    if "filter" in body:
        ids = [call["id"] for call in selection(_filter_args(body["filter"]), current())]
    elif "number" in body:
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


def _filter_args(given) -> MultiDict:
    """An export's `filter` object as the calls list's query (the same keys and meaning)."""
    if not isinstance(given, dict) or set(given) - set(FILTER_KEYS):
        abort(400, description=f"filter: an object with some of {', '.join(FILTER_KEYS)}")
    args = MultiDict()
    for key, value in given.items():
        if key in ("min_s", "max_s") and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        values = value if key == "flag" and isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            abort(400, description=f"filter: {key} is " + {"flag": "a list of texts", "min_s": "a number",
                                                           "max_s": "a number"}.get(key, "text"))
        for v in values:
            args.add(key, v)
    try:
        call_query(args, current())
    except BadFilter as exc:
        abort(400, description=str(exc))
    return args


def _json_object(allowed: dict[str, tuple], required: tuple[str, ...] = ()) -> dict:
    """The request's JSON object, checked: only `allowed` fields, each of one of its types, `required` present."""
    body = request.get_json(silent=True)
    if (not isinstance(body, dict) or set(body) - set(allowed) or any(name not in body for name in required)
            or not all(isinstance(body[name], allowed[name]) for name in body)):
        fields = ", ".join(f"{name}{'' if name in required else ' (optional)'}" for name in allowed)
        abort(400, description=f"send a JSON object with {fields}")
    return body


def _call_action(call_id: int, allowed: dict[str, tuple], required: tuple[str, ...], action):
    """Check the token's role, the call's line and the body, then run `action(call, body)` as the call
    page's buttons do; its refusal is a 400 and changes nothing."""
    if not current().at_least("supervisor"):
        abort(403, description="changing a call needs a supervisor or admin token")
    row = visible_call(call_id)
    body = _json_object(allowed, required)
    try:
        action(row, body)
    except CallrecError as exc:
        abort(400, description=str(exc))
    return jsonify(call=public_fields(shown_call(backend().catalogue.get_call(row["id"]))))


@bp.route("/v1/calls/<int:call_id>/notes", methods=["PUT"])
def set_notes(call_id: int):
    """Replace a call's notes (null or empty: none)."""
    return _call_action(call_id, {"notes": (str, type(None))}, ("notes",),
                        lambda call, body: save_notes(call, body["notes"] or "", current(), request.remote_addr))


@bp.route("/v1/calls/<int:call_id>/purpose", methods=["PUT"])
def set_purpose(call_id: int):
    """Give a call another purpose (which sets how long it is kept)."""
    return _call_action(call_id, {"purpose": (str,)}, ("purpose",),
                        lambda call, body: backend().store.classify(call["id"], body["purpose"], current().actor,
                                                                    request.remote_addr))


@bp.route("/v1/calls/<int:call_id>/hold", methods=["POST"])
def hold(call_id: int):
    """Put a call on hold for a reason: never deleted until released."""
    return _call_action(call_id, {"reason": (str,)}, ("reason",),
                        lambda call, body: backend().store.hold(call["id"], body["reason"], current().actor,
                                                                request.remote_addr))


@bp.route("/v1/calls/<int:call_id>/release", methods=["POST"])
def release(call_id: int):
    """End a call's hold (the audit trail keeps the hold's reason)."""
    def release_held(call, body):
        if not call["held"]:
            abort(409, description=f"call {call['id']} is not on hold")
        backend().store.release(call["id"], current().actor, request.remote_addr)
    return _call_action(call_id, {}, (), release_held)


def _contact_json(contact) -> dict:
    return {**asdict(contact), "url": url_for("api.contact", number=contact.number)}


_CONTACT_FIELDS = {"number": (str,), "name": (str,), "company": (str, type(None)), "note": (str, type(None))}


def _manage_contacts() -> None:
    if not current().at_least("supervisor"):
        abort(403, description="changing the contacts needs a supervisor or admin token")


def _contact_change(change):
    """Run a directory change: a refused one is a 400 (409 for a number taken), and changes nothing."""
    try:
        return change()
    except DuplicateContact as exc:
        abort(409, description=str(exc))
    except CallrecError as exc:
        abort(400, description=str(exc))


@bp.route("/v1/contacts")
def contacts():
    """Every contact, by name."""
    return jsonify(contacts=[_contact_json(contact) for contact in backend().directory.entries()])


@bp.route("/v1/contacts.csv")
def contacts_csv():
    """The contacts as the CSV file `callrec contacts import` reads."""
    _manage_contacts()
    return csv_response()


@bp.route("/v1/contacts", methods=["POST"])
def add_contact():
    """Add a contact."""
    _manage_contacts()
    body = _json_object(_CONTACT_FIELDS, ("number", "name"))
    directory = backend().directory
    contact = _contact_change(lambda: directory.checked(body["number"], body["name"], body.get("company"),
                                                        body.get("note")))
    _contact_change(lambda: directory.add(contact, current().actor, request.remote_addr))
    return jsonify(_contact_json(contact)), 201


def _existing(number: str):
    contact = backend().directory.get(number)
    if contact is None:
        abort(404, description="no contact has this number")
    return contact


@bp.route("/v1/contacts/<path:number>")
def contact(number: str):
    """The contact of a number (in any written form)."""
    return jsonify(_contact_json(_existing(number)))


@bp.route("/v1/contacts/<path:number>", methods=["PATCH"])
def edit_contact(number: str):
    """Change some fields of a contact (its number too)."""
    _manage_contacts()
    old = _existing(number)
    body = _json_object(_CONTACT_FIELDS)
    merged = {**asdict(old), **body}
    directory = backend().directory
    new = _contact_change(lambda: directory.checked(merged["number"], merged["name"], merged["company"],
                                                    merged["note"]))
    _contact_change(lambda: directory.update(old.number, new, current().actor, request.remote_addr))
    return jsonify(_contact_json(new))


@bp.route("/v1/contacts/<path:number>", methods=["DELETE"])
def delete_contact(number: str):
    """Delete a contact."""
    _manage_contacts()
    old = _existing(number)
    backend().directory.delete(old.number, current().actor, request.remote_addr)
    return jsonify(deleted=True)


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
                                          request.remote_addr, backend().config.recorder.country_code,
                                          backend().reading())
    except CallrecError as exc:
        if isinstance(exc, StoreLocked):
            raise
        abort(400, description=str(exc))
    return jsonify(changed=changed, call=public_fields(shown_call(backend().catalogue.get_call(row["id"]))))


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
