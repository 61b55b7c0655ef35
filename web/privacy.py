"""Answering a customer's privacy request: every recording of their number, exported in one signed
bundle with the access report in their language (access, portability), the report read or printed
on its own, erased (erasure) or put on hold (restriction), each confirmed and audited. Export
progress pages and downloads live here too."""

from flask import Blueprint, abort, current_app, flash, jsonify, redirect, render_template, request, send_file, url_for

from appliance.store.catalogue import CallFilter
from appliance.contacts import written_forms
from appliance.errors import CallrecError
from appliance.store.erasure import erase_subject
from appliance.store.personal import fill_all_tags
from web.auth import confirmed
from web.backend import backend
from appliance.transparency import controller_facts
from web.documents import document_response
from web.exports import CustomerRequest, ExportRefused
from web.i18n import LANGUAGES, error_text, gettext as _
from web.report import render_report
from web.sealed import sealed_filter, shown_calls
from web.security import client_address, current, require, visible_lines

bp = Blueprint("privacy", __name__)


def calls_of(number: str) -> list[dict]:
    """Every call of `number` the principal may see, newest first (in-progress calls included:
    the person asking must hear of them too)."""
    country = backend().config.recorder.country_code
    variants = written_forms(number, country)
    if backend().sealer is not None:        # a request must find every call: tag those left first
        fill_all_tags(backend().catalogue, backend().reading(), country)
    which = sealed_filter(CallFilter(numbers=tuple(variants), lines=visible_lines(current())))
    return shown_calls(backend().catalogue.find_calls(which))


def exports():
    """The web process's export jobs."""
    return current_app.extensions["exports"]


@bp.route("/privacy")
@require("supervisor")
def index():
    """Search by number → the calls of that number, and the three actions."""
    number = request.args.get("number", "").strip()
    calls = calls_of(number) if number else []
    listed = bool(number) and _listed(number)
    return render_template("privacy.html", number=number, calls=calls, listed=listed,
                           report_lang=backend().config.privacy.language,
                           variants=written_forms(number, backend().config.recorder.country_code) if number else [])


def _listed(number: str) -> bool:
    try:
        return backend().objections.listed(number)
    except CallrecError:
        return False            # not a number: it can't be on the list


def _selected(number: str) -> list[dict]:
    if not number:
        abort(400, description=_("Give the customer's phone number."))
    calls = calls_of(number)
    if not calls:
        abort(404, description=_("There are no calls of this number."))
    return calls


def _report_language(lang: str | None) -> str:
    """The access report's language: the one picked on the page, else the settings' default."""
    if lang is None or lang == "":
        return backend().config.privacy.language
    if lang not in LANGUAGES:
        abort(400, description=_("There is no access report in this language."))
    return lang


@bp.route("/privacy/report")
@require("supervisor")
def report():
    """The access report (GDPR Art. 15) of the number, in the language picked, to read or print."""
    number = request.args.get("number", "").strip()
    calls = _selected(number)
    lang = _report_language(request.args.get("lang"))
    backend().catalogue.add_audit(current().actor, "access-report", detail=f"{len(calls)} call(s), {lang}",
                                  address=client_address())
    return document_response(render_report(backend().config, number, calls, lang))


@bp.route("/privacy/export", methods=["POST"])
@require("supervisor")
def export():
    """Start a signed bundle of every recording of the number, with the access report in the
    language picked and the calls that have no recording."""
    number = request.form.get("number", "").strip()
    every = [c for c in _selected(number) if c["state"] != "recording"]
    lang = _report_language(request.form.get("lang"))
    calls = [c for c in every if c["file"]]
    config = backend().config
    customer = CustomerRequest(render_report(config, number, every, lang), controller_facts(config),
                               tuple(c["id"] for c in every if not c["file"]))
    try:
        job = exports().start([c["id"] for c in calls], current(), client_address(), customer)
    except ExportRefused as exc:
        flash(error_text(exc), "error")
        return redirect(url_for("privacy.index", number=request.form.get("number", "").strip()))
    return redirect(url_for("privacy.export_page", job_id=job.id))


@bp.route("/privacy/erase", methods=["POST"])
@require("admin")
@confirmed
def erase():
    """Erase the customer behind the number: every call, their contact, and the number wherever it
    was written (held calls are kept and listed: release them first)."""
    number = request.form.get("number", "").strip()
    if not number:
        abort(400, description=_("Give the customer's phone number."))
    if request.form.get("confirm", "").strip() != number:
        flash(_("To erase, type the number again in the confirmation box."), "error")
        return redirect(url_for("privacy.index", number=number))
    config = backend().config.recorder
    report = erase_subject(backend().store, number, current().actor, client_address(), config.country_code,
                           backend().reading())
    exports().forget_calls(set(report.erased))
    flash(_("{n} call(s) erased. Reference for the customer: {reference}.", n=len(report.erased),
            reference=report.reference))
    if not report.log_emptied:
        flash(_("Another program kept the catalogue busy: the erased rows stay in its log until the next "
                "checkpoint (at the latest when the recorder restarts)."), "error")
    for call in report.held:
        flash(_("Call {id} is on hold ({reason}) and was kept: release it, then erase again.", **call), "error")
    for call_id in report.recording:
        flash(_("Call {id} is being recorded and was kept: erase again once it has ended.", id=call_id), "error")
    return redirect(url_for("privacy.index"))


def _mark_all(flag: str, mark, missing: str, done) -> object:
    """Hold or restrict every call of the form's number not `flag`ged yet, for the form's reason."""
    number = request.form.get("number", "").strip()
    reason = request.form.get("reason", "").strip()
    if not reason:
        flash(missing, "error")
        return redirect(url_for("privacy.index", number=number))
    marked = 0
    for call in _selected(number):
        if not call[flag]:
            mark(call["id"], reason, current().actor, client_address())
            marked += 1
    flash(done(marked))
    return redirect(url_for("privacy.index", number=number))


@bp.route("/privacy/hold", methods=["POST"])
@require("supervisor")
def hold():
    """Put every call of the number on hold (a dispute, a claim: kept until released)."""
    return _mark_all("held", backend().store.hold, _("a hold needs a reason (a dispute, a claim…)"),
                     lambda n: _("{n} call(s) put on hold.", n=n))


@bp.route("/privacy/restrict", methods=["POST"])
@require("supervisor")
def restrict():
    """Restrict every call of the number (GDPR Art. 18): kept, listed, not played."""
    return _mark_all("restricted", backend().store.restrict,
                     _("a restriction needs a reason (the customer's request, its date…)"),
                     lambda n: _("{n} call(s) restricted.", n=n))


@bp.route("/privacy/rectify", methods=["POST"])
@require("supervisor")
def rectify():
    """Correct the number and/or the name on every call of the number (GDPR Art. 16)."""
    number = request.form.get("number", "").strip()
    new_number = request.form.get("new_number", "").strip() or None
    new_name = request.form.get("new_name", "").strip() or None
    if new_number is None and new_name is None:
        flash(_("Give the right number, the right name, or both."), "error")
        return redirect(url_for("privacy.index", number=number))
    corrected = 0
    for call in _selected(number):
        try:
            corrected += bool(backend().store.rectify(call["id"], current().actor, new_number, new_name, client_address(),
                                                      backend().config.recorder.country_code, backend().reading()))
        except CallrecError as exc:
            flash(error_text(exc), "error")
            return redirect(url_for("privacy.index", number=number))
    flash(_("{n} call(s) corrected.", n=corrected))
    return redirect(url_for("privacy.index", number=new_number or number))


@bp.route("/privacy/do-not-record")
@require("supervisor")
def do_not_record():
    """The do-not-record list (GDPR Art. 21): the last digits of each number, when and by whom."""
    return render_template("do_not_record.html", entries=backend().objections.entries())


@bp.route("/privacy/do-not-record", methods=["POST"])
@require("supervisor")
def object_to_recording():
    """Stop recording the calls of a number (the person objected)."""
    number = request.form.get("number", "").strip()
    try:
        added = backend().objections.add(number, current().actor, request.form.get("note", "").strip() or None,
                                         client_address())
    except CallrecError as exc:
        flash(error_text(exc), "error")
        return redirect(url_for("privacy.do_not_record"))
    flash(_("Calls of this number are not recorded from now on.") if added
          else _("This number is on the list already."))
    return redirect(url_for("privacy.do_not_record"))


@bp.route("/privacy/do-not-record/remove", methods=["POST"])
@require("supervisor")
def record_again():
    """Take a number off the list (the person withdrew the objection)."""
    try:
        removed = backend().objections.remove(request.form.get("number", "").strip(), current().actor,
                                              client_address())
    except CallrecError as exc:
        flash(error_text(exc), "error")
        return redirect(url_for("privacy.do_not_record"))
    if removed:
        flash(_("Calls of this number are recorded again."))
    else:
        flash(_("This number is not on the list."), "error")
    return redirect(url_for("privacy.do_not_record"))


@bp.route("/exports/<job_id>")
def export_page(job_id: str):
    """The progress of a bundle, then its download link."""
    job = exports().get(job_id, current())
    if job is None:
        abort(404, description=_("There is no such export (bundles are kept for an hour)."))
    return render_template("export.html", job=job.public())


@bp.route("/exports/<job_id>.json")
def export_status(job_id: str):
    """The progress of a bundle, for the progress bar."""
    job = exports().get(job_id, current())
    if job is None:
        abort(404)
    return jsonify(job.public())


@bp.route("/exports/<job_id>/bundle")
def export_download(job_id: str):
    """The finished bundle, streamed from disk."""
    job = exports().get(job_id, current())
    if job is None or job.state != "ready":
        abort(404, description=_("This bundle is not ready."))
    return send_file(job.path, mimetype="application/zip", as_attachment=True,
                     download_name=f"callrec-export-{job.id}.zip", max_age=0)
