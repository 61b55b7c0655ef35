"""The contacts page: the names given to callers' numbers, read by everyone, added, edited,
deleted, imported and exported (CSV) by supervisors and admins. The recorder names a call from the
directory when the call ends, so a change names the calls that follow it."""

import tempfile
from pathlib import Path

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for

from appliance.contacts import ContactsError, read_csv
from appliance.errors import CallrecError
from web.backend import backend
from web.i18n import error_text, gettext as _
from web.security import client_address, current, require

bp = Blueprint("contacts", __name__)


def _form_contact():
    """The contact typed in the form, checked."""
    form = request.form
    return backend().directory.checked(form.get("number", ""), form.get("name", ""), form.get("company"),
                                       form.get("note"))


def _done(action, done: str):
    """Run a directory change; its error becomes a message and nothing is changed."""
    try:
        if action() is False:
            flash(_("There is no such contact."), "error")
        else:
            flash(done)
    except CallrecError as exc:
        flash(error_text(exc), "error")
    return redirect(url_for("contacts.page"))


@bp.route("/contacts")
def page():
    """Every contact, by name."""
    return render_template("contacts.html", contacts=backend().directory.entries())


@bp.route("/contacts/add", methods=["POST"])
@require("supervisor")
def add():
    """Add a contact."""
    return _done(lambda: backend().directory.add(_form_contact(), current().actor, client_address()),
                 _("Contact added."))


@bp.route("/contacts/edit", methods=["POST"])
@require("supervisor")
def edit():
    """Change a contact (its number too)."""
    old = request.form.get("old_number", "")
    return _done(lambda: backend().directory.update(old, _form_contact(), current().actor, client_address()),
                 _("Contact saved."))


@bp.route("/contacts/delete", methods=["POST"])
@require("supervisor")
def delete():
    """Delete a contact: the calls that follow are no longer named (those before keep their name)."""
    number = request.form.get("number", "")
    return _done(lambda: backend().directory.delete(number, current().actor, client_address()),
                 _("Contact deleted."))


@bp.route("/contacts/import", methods=["POST"])
@require("supervisor")
def import_csv():
    """Merge an uploaded CSV file, checked like `callrec contacts import` checks one: all or nothing."""
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        flash(_("Choose a CSV file to import."), "error")
        return redirect(url_for("contacts.page"))
    directory = backend().directory
    with tempfile.TemporaryDirectory(dir=backend().exports_dir) as folder:
        path = Path(folder) / "contacts.csv"
        upload.save(path)
        try:
            found = read_csv(path, directory.country_code)
        except ContactsError as exc:
            flash(str(exc).replace(str(path), upload.filename), "error")
            return redirect(url_for("contacts.page"))
    added, updated = directory.import_checked(found, current().actor, upload.filename, client_address())
    flash(_("{added} added, {updated} updated.", added=added, updated=updated))
    return redirect(url_for("contacts.page"))


def csv_response() -> Response:
    """The directory as the CSV file the import reads (audited: it is personal data leaving)."""
    contacts = backend().directory.entries()
    backend().catalogue.add_audit(current().actor, "contact-export", detail=f"{len(contacts)} contact(s)",
                                  address=client_address())
    return Response(backend().directory.csv_text(contacts), mimetype="text/csv",
                    headers={"Content-Disposition": "attachment; filename=callrec-contacts.csv",
                             "Cache-Control": "private, no-store"})


@bp.route("/contacts.csv")
@require("supervisor")
def export_csv():
    """Download the directory as CSV."""
    return csv_response()
