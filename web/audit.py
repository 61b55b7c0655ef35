"""The audit trail: who listened to, downloaded, exported, erased or changed what, when and from
which address; filtered on the page and exported as CSV (streamed row by row)."""

import csv
import io

from flask import Blueprint, Response, render_template, request

from web.backend import backend
from web.security import require

bp = Blueprint("audit", __name__)

PAGE = 100
COLUMNS = ("id", "at", "actor", "action", "call_id", "detail", "address")


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
    try:
        number = max(1, int(request.args.get("page", "1")))
    except ValueError:
        number = 1
    where, params = _query(request.args)
    with backend().catalogue.transaction() as db:
        rows = [dict(r) for r in db.execute(
            f"SELECT {', '.join(COLUMNS)} FROM audit{where} ORDER BY id DESC LIMIT ? OFFSET ?",
            [*params, PAGE + 1, (number - 1) * PAGE])]
    return render_template("audit.html", entries=rows[:PAGE], more=len(rows) > PAGE, page=number,
                           args=request.args)


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
            with catalogue.transaction() as db:
                batch = db.execute(
                    f"SELECT {', '.join(COLUMNS)} FROM audit{where}{' AND' if where else ' WHERE'} id > ? "
                    f"ORDER BY id LIMIT 1000", [*params, last]).fetchall()
            if not batch:
                break
            for row in batch:
                writer.writerow(tuple(row))
            last = batch[-1]["id"]
            yield out.getvalue()
            out.seek(0)
            out.truncate()
        yield out.getvalue()
    return Response(rows(), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=callrec-audit.csv"})
