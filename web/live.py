"""A call in progress from the screen: pause and resume it as the pause button does, and hear it
live. Both go through the recorder's control channel (`appliance.control`); the web UI never
touches the hardware."""

import json
import socket
import struct
import time
from pathlib import Path

from flask import Blueprint, Response, abort, current_app, flash, redirect, request, stream_with_context, url_for

from appliance.clock import iso_utc
from appliance.control import SOCKET_NAME
from web.backend import backend
from web.i18n import gettext as _
from web.security import client_address, current, require

bp = Blueprint("live", __name__)

CONNECT_S = 3.0             # the recorder answers a request within this
READ_S = 1.0                # how often a listen stream looks whether its browser is still there
CHUNK = 4096


class ControlRefused(Exception):
    """The recorder refused the request (its reason), or does not answer."""


def ask(folder: Path, request_: dict) -> tuple[dict, socket.socket]:
    """Send one request to the recorder's control socket; its answer and the open connection
    (a listen's audio follows on it). Raises ControlRefused."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(CONNECT_S)
    try:
        conn.connect(str(Path(folder) / SOCKET_NAME))
        conn.sendall(json.dumps(request_).encode() + b"\n")
        answer = json.loads(_answer_line(conn) or b"{}")
    except (OSError, ValueError):
        conn.close()
        raise ControlRefused(_("The recorder does not answer.")) from None
    if not answer.get("ok"):
        conn.close()
        raise ControlRefused(refusal_text(answer))
    return answer, conn


def refusal_text(answer: dict) -> str:
    """The recorder's refusal in the user's language: by its `reason` (see
    `appliance.control.REFUSALS`), else as the recorder words it."""
    values = answer.get("values") or {}
    match answer.get("reason"):
        case "not-in-progress":
            return _("This call is not in progress.")
        case "several-calls":
            return _("Several calls are in progress on this line: choose the call on its page.")
        case "already-paused":
            return _("This call is paused already.")
        case "not-paused":
            return _("This call is not paused.")
        case "not-recorded":
            return _("This call is not being recorded: there is nothing to pause.")
        case "no-answer":
            return _("The line does not answer the recorder: try again in a moment.")
        case "listeners-full":
            return _("{limit} people are listening to this line already, as many as its settings allow.",
                     limit=values.get("limit", "?"))
    return answer.get("error") or _("The recorder does not answer.")


def _answer_line(conn: socket.socket) -> bytes:
    """The answer's line, read a byte at a time: what follows it (a listen's audio) stays unread."""
    line = b""
    while not line.endswith(b"\n") and len(line) < CHUNK and (byte := conn.recv(1)):
        line += byte
    return line


def call_of_line(call_id: int) -> dict:
    """The call, when it is in progress on a line the principal has; 403 without the line, 404
    when there is no such call, 409 when it is over."""
    try:
        if not 0 < call_id < 2 ** 63:          # beyond SQLite's integers: no such call either
            raise KeyError(call_id)
        call = backend().catalogue.get_call(call_id)
    except KeyError:
        abort(404, description=_("There is no such call."))
    if not current().may_see(call["line"]):
        abort(403, description=_("You do not have this call's line."))
    if call["state"] != "recording":
        abort(409, description=_("This call is not in progress."))
    return call


def _pause(call_id: int, pause: bool):
    call = call_of_line(call_id)
    principal = current()
    try:
        ask(backend().config.recorder.live_dir, {"command": "pause" if pause else "resume", "line": call["line"],
                                                 "by": principal.actor, "call_id": call_id})[1].close()
    except ControlRefused as exc:
        flash(str(exc), "error")
    else:
        backend().catalogue.add_audit(principal.actor, "pause" if pause else "resume", call_id, "screen",
                                      client_address())
        flash(_("The recording is paused.") if pause else _("The recording is resumed."))
    back = url_for("status.page") if request.form.get("back") == "status" else url_for("calls.detail", call_id=call_id)
    return redirect(back)


@bp.route("/calls/<int:call_id>/pause", methods=["POST"])
def pause(call_id: int):
    """Pause the call in progress (staff of its line and above)."""
    return _pause(call_id, True)


@bp.route("/calls/<int:call_id>/resume", methods=["POST"])
def resume(call_id: int):
    """Resume the call in progress."""
    return _pause(call_id, False)


def wav_header(rate: int, channels: int) -> bytes:
    """A WAV header for 16-bit PCM of unknown length (the largest sizes, as streams write them)."""
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16) +
            b"data" + struct.pack("<I", 0xFFFFFFFF))


@bp.route("/calls/<int:call_id>/live")
@require("supervisor")
def listen(call_id: int):
    """The call in progress as it is recorded: a WAV stream of open length, from when the call is
    known to be kept, silence while paused, until the call ends or the browser goes. Audited when
    it ends, with how long it lasted. Each stream holds one of the server's threads: a quarter of
    them at most stream calls."""
    call = call_of_line(call_id)
    principal, address = current(), client_address()
    streams = current_app.extensions["live_streams"]
    if not streams.acquire(blocking=False):
        return Response(_("Too many calls are being listened to: try again later."), status=503, mimetype="text/plain")
    try:
        answer, conn = ask(backend().config.recorder.live_dir,
                           {"command": "listen", "line": call["line"], "by": principal.actor, "call_id": call_id})
    except ControlRefused as exc:
        streams.release()
        return Response(str(exc), status=409, mimetype="text/plain")
    gone = request.environ.get("callrec.gone")
    catalogue = backend().catalogue

    def produce():
        started, began = time.monotonic(), iso_utc(time.time())
        try:
            yield wav_header(answer["rate"], answer["channels"])
            conn.settimeout(READ_S)
            while gone is None or not gone.is_set():
                try:
                    pcm = conn.recv(CHUNK)
                except TimeoutError:
                    continue
                if not pcm:
                    break
                yield pcm
        finally:
            conn.close()
            streams.release()
            catalogue.add_audit(principal.actor, "live-listen", call_id,
                                f"from {began} for {time.monotonic() - started:.0f} s", address)
    response = Response(stream_with_context(produce()), mimetype="audio/wav")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"
    return response
