"""The audit trail: who listened to, downloaded, exported, erased or changed what, when and from
which address; filtered on the page and exported as CSV (streamed row by row)."""

import csv
import io

from flask import Blueprint, Response, render_template, request

from appliance.store.catalogue import AUDIT_FIELDS, AuditFilter
from appliance.store.directory import inert_cell
from web.backend import backend
from web.calls import known_args, page_number
from web.security import require

bp = Blueprint("audit", __name__)

PAGE = 100


FILTER_KEYS = ("actor", "action", "call", "since", "until")


def _query(args) -> AuditFilter:
    call = args.get("call", "").strip()
    return AuditFilter(actor=args.get("actor", "").strip() or None, action=args.get("action", "").strip() or None,
                       call_id=int(call) if call.isdigit() else None,
                       since=args.get("since", "").strip() or None, until=args.get("until", "").strip() or None)


@bp.route("/audit")
@require("admin")
def page():
    """The newest entries first."""
    number = page_number(request.args)
    rows = backend().catalogue.audit_entries(_query(request.args), PAGE + 1, (number - 1) * PAGE)
    return render_template("audit.html", entries=rows[:PAGE], more=len(rows) > PAGE, page=number,
                           args=request.args, filters=known_args(request.args, FILTER_KEYS))


@bp.route("/audit.csv")
@require("admin")
def export_csv():
    """The filtered trail as CSV, oldest first, streamed so its size does not matter."""
    which = _query(request.args)
    catalogue = backend().catalogue

    def rows():
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(AUDIT_FIELDS)
        last = 0
        while batch := catalogue.audit_entries(which, 1000, after_id=last):
            for row in batch:
                writer.writerow([inert_cell(row[field]) for field in AUDIT_FIELDS])
            last = batch[-1]["id"]
            yield out.getvalue()
            out.seek(0)
            out.truncate()
        yield out.getvalue()
    return Response(rows(), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=callrec-audit.csv"})
