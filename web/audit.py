"""The audit trail: who listened to, downloaded, exported, erased or changed what, when and from
which address; filtered on the page and exported as CSV (streamed row by row)."""

import csv
import io

from flask import Blueprint, Response, render_template, request

from web.backend import backend
from web.calls import known_args, page_number
from web.security import require

bp = Blueprint("audit", __name__)

PAGE = 100
COLUMNS = ("id", "at", "actor", "action", "call_id", "detail", "address")


FILTER_KEYS = ("actor", "action", "call", "since", "until")


def _inert(value):
    """A cell a spreadsheet shows as text: a leading = + - @ would make it a formula (a hold
    reason typed as `=HYPERLINK(…)`, say)."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _query(args) -> tuple[str, list]:
    where, params = [], []
    for key, column in (("actor", "actor"), ("action", "action")):
        if value := args.get(key, "").strip():
            where.append(f"{column} LIKE ?")
            params.append(f"%{value}%")
    if (call := args.get("call", "").strip()).isdigit():
        where.append("call_id = ?")
        params.append(int(call))
    if since := args.get("since", "").strip():
        where.append("at >= ?")
        params.append(since)
    if until := args.get("until", "").strip():
        where.append("at < ?")
        params.append(until)
    return (" WHERE " + " AND ".join(where)) if where else "", params


@bp.route("/audit")
@require("admin")
def page():
    """The newest entries first."""
    number = page_number(request.args)
    where, params = _query(request.args)
    with backend().catalogue.read() as db:
        rows = [dict(r) for r in db.execute(
            f"SELECT {', '.join(COLUMNS)} FROM audit{where} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*params, PAGE + 1, (number - 1) * PAGE])]
    return render_template("audit.html", entries=rows[:PAGE], more=len(rows) > PAGE, page=number,
                           args=request.args, filters=known_args(request.args, FILTER_KEYS))


@bp.route("/audit.csv")
@require("admin")
def export_csv():
    """The filtered trail as CSV, oldest first, streamed so its size does not matter."""
    where, params = _query(request.args)
    catalogue = backend().catalogue

    def rows():
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        last = 0
        while True:
            with catalogue.read() as db:
                batch = db.execute(
                    f"SELECT {', '.join(COLUMNS)} FROM audit{where}{' AND' if where else ' WHERE'} id > ? "
                    f"ORDER BY id LIMIT 1000", [*params, last]).fetchall()
            if not batch:
                break
            for row in batch:
                writer.writerow([_inert(value) for value in row])
            last = batch[-1]["id"]
            yield out.getvalue()
            out.seek(0)
            out.truncate()
        yield out.getvalue()
    return Response(rows(), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=callrec-audit.csv"})
