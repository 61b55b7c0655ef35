"""Health at a glance: each line's state and input level (live, over Server-Sent Events), disk use
and hours of recording left, the cleaner's alarm and every alarm episode (since when, whether it was
e-mailed), time sync, version, and calls per day."""

import json
import time
from datetime import date, datetime, timedelta

from flask import Blueprint, Response, current_app, jsonify, render_template, session, stream_with_context

from appliance import __version__
from appliance.advice import TEXTS, config_advice
from appliance.alarms import TITLES, episodes
from appliance.clock import iso_utc
from appliance.store.catalogue import CallFilter
from web.backend import backend
from web.i18n import gettext as _
from web.security import current, session_idle_s, visible_lines

bp = Blueprint("status", __name__)

EVENT_INTERVAL_S = 1.0
EVENT_STREAM_S = 120        # the browser reconnects by itself; a thread is not held for ever
CHART_DAYS = 30


def disk() -> dict:
    """Archive size, free space, the floor the cleaner keeps and the hours of recording left."""
    store = backend().store
    free, floor, archive = store.free_bytes(), store.floor_bytes(), store.archive_bytes()
    rate = store.bytes_per_hour()
    room = free - floor
    cap = store.settings.max_archive_mb * 1_000_000
    if cap:
        room = min(room, cap - archive)
    return {"archive_bytes": archive, "free_bytes": free, "floor_bytes": floor, "cap_bytes": cap or None,
            "bytes_per_hour": round(rate), "hours_left": round(max(room, 0) / rate, 1) if rate else None}


def snapshot() -> dict:
    """The whole status, as the page and the event stream show it (lines limited to the principal's)."""
    live = backend().live()
    principal = current()
    lines = []
    outgoing = backend().config.outgoing_policy
    for name in backend().config.line_names:
        if not principal.may_see(name):
            continue
        state = next((s for s in (live or {}).get("lines", []) if s["name"] == name), None)
        # A line the recorder does not report has no level either (null, not absent, for the page).
        unknown = {"name": name, "state": "unknown", "level_dbfs": None, "peak_dbfs": None}
        lines.append({**(state or unknown), "outgoing": outgoing[name]})
    alarms = [{"name": name, "title": TITLES.get(name, name), **episode.__dict__}
              for name, episode in sorted(episodes(backend().catalogue).items(), key=lambda item: item[1].raised_at)]
    return {"recorder_running": live is not None, "lines": lines, "disk": disk(), "alarms": alarms,
            "alarms_sent": backend().config.alarms is not None,
            "alarm": backend().store.alarm() or (live or {}).get("storage_alarm"), "clock_synced": (live or {}).get("clock_synced"),
            "version": __version__, "now": iso_utc(time.time()),
            "store_locked_since": backend().locked_since if backend().locked else None}


def advice() -> list[str]:
    """The settings' departures from the authorities' advice (see `appliance.advice`), translated."""
    return [_(TEXTS[a.kind], **{k: _(v) if k == "purpose" else v for k, v in a.values.items()})
            for a in config_advice(backend().config)]


def recording_policy(rules) -> str:
    """Which of a line's calls are recorded (never, always, by schedule, one in N), translated."""
    if not rules.record:
        return _("never")
    parts = [_("one call in {n}", n=rules.record_one_in)] if rules.record_one_in > 1 else []
    if rules.schedule:
        parts.append(_("only {schedule}", schedule="; ".join(rules.schedule)))
    return ", ".join(parts) or _("every call")


def calls_per_day(days: int = CHART_DAYS) -> list[tuple[str, int]]:
    """Calls started on each of the last `days` local days (the principal's lines)."""
    today = date.today()
    first = today - timedelta(days=days - 1)
    since = iso_utc(datetime.combine(first, datetime.min.time()).astimezone().timestamp())
    counts = {first + timedelta(days=i): 0 for i in range(days)}
    for started in backend().catalogue.call_starts(CallFilter(since=since, lines=visible_lines(current()))):
        local = datetime.fromisoformat(started.replace("Z", "+00:00")).astimezone().date()
        if local in counts:
            counts[local] += 1
    return [(day.isoformat(), n) for day, n in counts.items()]


@bp.route("/status")
def page():
    """The status page (it then follows the event stream)."""
    config = backend().config
    policies = {line.name: recording_policy(line) for line in [*config.line, *config.sip_trunk]}
    return render_template("status.html", status=snapshot(), chart=calls_per_day(), advice=advice(),
                           policies=policies)


@bp.route("/status.json")
def status_json():
    """The status once, for polling."""
    return jsonify(snapshot())


@bp.route("/status/events")
def events():
    """The status every second as Server-Sent Events, while the session lasts. Each stream holds
    one of the server's threads, so at most half of them stream; beyond that the page polls
    `/status.json`."""
    streams = current_app.extensions["status_streams"]
    if not streams.acquire(blocking=False):
        return Response("busy: poll /status.json", status=503, mimetype="text/plain")

    accounts, sid = backend().accounts, session.get("sid", "")

    def produce():
        try:
            deadline = time.monotonic() + EVENT_STREAM_S
            # The stream ends with its session (logged out, ended by an admin, expired).
            while time.monotonic() < deadline and accounts.session_user(sid, session_idle_s(), touch=False):
                yield f"data: {json.dumps(snapshot())}\n\n"
                time.sleep(EVENT_INTERVAL_S)
        finally:
            streams.release()
    response = Response(stream_with_context(produce()), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"
    return response
