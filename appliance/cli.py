"""The `callrec` command."""

import getpass
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import click

from appliance import __version__
from appliance.store.catalogue import Catalogue, public_fields
from appliance.config import DEFAULT_CONFIG, DEFAULT_DATA_DIR, DOCUMENT_LANGUAGES, load_config
from appliance.errors import CallrecError, ConfigError, StoreError
from appliance.store.sealing import is_sealed_field

log = logging.getLogger("callrec")


class _Group(click.Group):
    """Shows our own errors as one clear message and exit status 2, never as a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CallrecError as exc:
            click.echo(f"callrec: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="callrec")
@click.option("-v", "--verbose", is_flag=True, help="Log debugging detail.")
def main(verbose: bool) -> None:
    """Call-recording appliance: record phone lines, keep a catalogue of the calls."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _config_option(f):
    return click.option("--config", "config_path", type=click.Path(path_type=Path),
                        default=DEFAULT_CONFIG, show_default=True,
                        help="The appliance's configuration file.")(f)


def _data_dir(config_path: Path, data: Path | None) -> Path:
    """The data folder: --data, else the config's, else the default."""
    if data is not None:
        return data
    if config_path.exists():
        return load_config(config_path).recorder.data_dir
    if config_path != DEFAULT_CONFIG:
        raise ConfigError(f"configuration file {config_path} does not exist")
    return DEFAULT_DATA_DIR


def _catalogue(config_path: Path, data: Path | None) -> tuple[Catalogue, Path]:
    data_dir = _data_dir(config_path, data)
    if not (data_dir / "catalogue.db").exists():
        raise StoreError(f"no catalogue in {data_dir}")
    return Catalogue(data_dir), data_dir


def _recovery_secret(data_dir: Path) -> bytes | None:
    """A sealed store's secret, from its recovery key asked for here (hidden); None for a plain
    store. A key that does not open the store stops the command before it changes anything."""
    from appliance.store.keyslots import KeySlots
    from appliance.store.sealing import is_sealed

    if not is_sealed(data_dir):
        return None
    text = click.prompt("The store is sealed: its recovery key", hide_input=True, err=True)
    return KeySlots(data_dir).unlock_with_recovery(text)


def _opener(data_dir: Path):
    """What opens a sealed store's fields (see `_recovery_secret`); None for a plain store."""
    from appliance.store.sealing import Opener

    secret = _recovery_secret(data_dir)
    return Opener(secret) if secret is not None else None


def _country(config_path: Path) -> str:
    """The configured country code, by which national numbers are read (32 without a config)."""
    return load_config(config_path).recorder.country_code if config_path.exists() else "32"


def _store(config_path: Path, data: Path | None):
    """The store of the configured data folder, with the configured purposes (or the defaults)."""
    from appliance.config import DEFAULT_PURPOSES, StoreConfig
    from appliance.store.retention import Store

    catalogue, data_dir = _catalogue(config_path, data)
    if config_path.exists():
        return Store.configured(catalogue, data_dir, load_config(config_path))
    return Store(catalogue, data_dir, DEFAULT_PURPOSES, StoreConfig())


def _data_option(f):
    return click.option("--data", type=click.Path(path_type=Path, file_okay=False),
                        help="Data folder (default: the config's).")(f)


def _actor_option(f):
    return click.option("--actor", default=lambda: f"cli:{getpass.getuser()}", show_default="cli:USER",
                        help="Who does this, for the audit trail.")(f)


@main.command()
@_config_option
def run(config_path: Path) -> None:
    """Record the configured lines until stopped (SIGTERM or Ctrl-C)."""
    from appliance.recorder import Recorder
    from appliance.sdnotify import notify
    from appliance.service import install_excepthook

    install_excepthook()
    config = load_config(config_path)
    recorder = Recorder(config)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    recorder.start()
    log.info("recording %d line(s) into %s", len(config.line_names), config.recorder.data_dir)
    notify("READY=1", f"STATUS=recording {len(config.line_names)} line(s)")
    reload = threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: reload.set())   # the web UI changed the configuration
    while not stop.wait(0.5):
        if reload.is_set():
            reload.clear()
            try:
                pending = recorder.reload(load_config(config_path))
            except CallrecError as exc:
                log.error("configuration not reloaded, the previous one stays in force: %s", exc)
                continue
            log.info("configuration reloaded%s", f"; at the next restart: {', '.join(pending)}" if pending else "")
    log.info("stopping: finalising calls in progress")
    recorder.stop()


@main.command()
@click.argument("scenario", required=False, type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="Configuration to simulate (default: the bundled demo line).")
@click.option("--data", type=click.Path(path_type=Path, file_okay=False),
              help="Data folder (default: ./callrec-data; never the configured one).")
def simulate(scenario: Path | None, config_path: Path | None, data: Path | None) -> None:
    """Run SCENARIO (default: the bundled demo) through the real recorder on simulated hardware.

    Returns when the last call is finalised and prints the calls recorded.
    """
    from appliance.service import install_excepthook
    from appliance.simulate import run_simulation

    install_excepthook()
    calls = run_simulation(scenario, config_path, data)
    for call in calls:
        click.echo(f"call {call['id']}: {call['line']} {call['direction']} {call['state']} "
                   f"{call['duration_s'] or 0:.1f} s {call['file'] or '(no audio)'}")


@main.command()
@_config_option
@click.option("--seconds", type=click.FloatRange(0.5, 60), default=3.0, show_default=True,
              help="How long to listen to each sound card.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--identify", is_flag=True,
              help="Find each analog line's sound card and hook pin as its handset is lifted, and write them "
                   "into the configuration (the recorder must be stopped).")
@click.option("--timeout", type=click.FloatRange(5, 600), default=60.0, show_default=True,
              help="With --identify: how long to wait for each handset.")
def doctor(config_path: Path, seconds: float, as_json: bool, identify: bool, timeout: float) -> None:
    """Check the appliance: config, sound cards, GPIO, modems, disk, clock, services, web.

    Says what is wrong and how to fix it; exits with status 1 when something is wrong.
    """
    from appliance import doctor as checks

    if identify:
        from appliance.identify import identify as identify_lines

        identify_lines(config_path, timeout_s=timeout, say=click.echo)
        return
    results = checks.run_checks(config_path, seconds)
    click.echo(checks.as_json(results) if as_json else checks.render(results))
    sys.exit(1 if any(result.status == checks.FAIL for result in results) else 0)


@main.command()
@_config_option
@_data_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--number", help="Only the calls of this phone number.")
@click.option("--since", help="Only calls started at or after this UTC time (ISO 8601, e.g. 2026-11-23).")
@click.option("--until", help="Only calls started before this UTC time.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many, newest first.")
def calls(config_path: Path, data: Path | None, as_json: bool, number: str | None, since: str | None,
          until: str | None, limit: int | None) -> None:
    """List the catalogue's calls: all, oldest first; or, with a filter, the newest first. A
    sealed store's numbers and names show as `sealed` (the web UI opens them after a login);
    with --number, its recovery key is asked for, and the calls found show them opened."""
    from appliance.store.catalogue import CallFilter
    from appliance.store.personal import fill_all_tags, number_tag, opened_call

    catalogue, data_dir = _catalogue(config_path, data)
    opener = _opener(data_dir) if number else None
    if opener is not None:
        fill_all_tags(catalogue, opener, _country(config_path))
        which = CallFilter(since=since, until=until, tags=(number_tag(opener, number, _country(config_path)),))
        found = [opened_call(opener, row) for row in catalogue.find_calls(which, limit or 1000)]
    elif number or since or until or limit:
        found = catalogue.find(number, since, until, limit=limit or 1000)
    else:
        found = catalogue.calls()
    rows = [public_fields(row) for row in found]
    catalogue.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        flags = " ".join(flag for flag, on in (("held", row["held"]), ("restricted", row["restricted"]),
                                                ("clock-unsynced", row["clock_synced"] == 0)) if on)
        who = " ".join("sealed" if is_sealed_field(row[name]) else row[name] or ""
                       for name in ("number", "contact_name")).strip()
        click.echo(f"{row['id']:>6}  {row['started_at']}  {row['line']:<10} {row['direction']:<9}"
                   f"{row['state']:<12}{row['duration_s'] or 0:>8.1f} s  {who:<28}{flags}")


@main.command()
@click.argument("call_id", type=int)
@click.option("--reason", required=True, help="Why: a dispute, a restriction request…")
@_config_option
@_data_option
@_actor_option
def hold(call_id: int, reason: str, config_path: Path, data: Path | None, actor: str) -> None:
    """Put a call on hold: it is kept whatever its retention or the disk says, until released."""
    _store(config_path, data).hold(call_id, reason, actor)
    click.echo(f"call {call_id} is on hold")


@main.command()
@click.argument("call_id", type=int)
@_config_option
@_data_option
@_actor_option
def release(call_id: int, config_path: Path, data: Path | None, actor: str) -> None:
    """Release a call's hold: its purpose's retention applies again."""
    _store(config_path, data).release(call_id, actor)
    click.echo(f"call {call_id} is released")


@main.command()
@click.argument("call_id", type=int)
@click.option("--reason", required=True, help="Why: the customer's request and its date…")
@_config_option
@_data_option
@_actor_option
def restrict(call_id: int, reason: str, config_path: Path, data: Path | None, actor: str) -> None:
    """Restrict a call (GDPR Art. 18): kept whatever its retention, and played, downloaded or
    exported only by an admin who gives a reason."""
    _store(config_path, data).restrict(call_id, reason, actor)
    click.echo(f"call {call_id} is restricted")


@main.command()
@click.argument("call_id", type=int)
@_config_option
@_data_option
@_actor_option
def unrestrict(call_id: int, config_path: Path, data: Path | None, actor: str) -> None:
    """Lift a call's restriction."""
    _store(config_path, data).lift_restriction(call_id, actor)
    click.echo(f"call {call_id} is no longer restricted")


@main.command()
@click.argument("call_id", type=int)
@click.option("--number", help="The right number.")
@click.option("--name", help="The right name of the caller (their contact's too).")
@_config_option
@_data_option
@_actor_option
def rectify(call_id: int, number: str | None, name: str | None, config_path: Path, data: Path | None,
            actor: str) -> None:
    """Correct a call's number or caller's name (GDPR Art. 16); the old values stay only as keyed
    hashes in the ledger. A sealed store's recovery key is asked for."""
    if number is None and name is None:
        raise click.UsageError("give --number, --name or both")
    store = _store(config_path, data)
    changed = store.rectify(call_id, actor, number, name, country_code=_country(config_path),
                            opener=_opener(store.data_dir))
    click.echo(f"call {call_id}: {', '.join(changed) or 'nothing'} corrected")


@main.command()
@click.argument("call_id", type=int)
@click.argument("purpose")
@_config_option
@_data_option
@_actor_option
def classify(call_id: int, purpose: str, config_path: Path, data: Path | None, actor: str) -> None:
    """Give a call another purpose (e.g. agreement), which sets how long it is kept."""
    store = _store(config_path, data)
    store.classify(call_id, purpose, actor)
    until = store.expires_at(store.catalogue.get_call(call_id)) or "its hold is released, then its retention"
    click.echo(f"call {call_id} is now kept for {purpose} until {until}")


@main.command()
@click.argument("call_id", type=int, required=False)
@click.option("--number", help="Erase the person behind this number instead: every call, their contact, "
                               "and the number wherever the product wrote it.")
@click.option("--reason", default="erasure request", show_default=True, help="With CALL_ID: why.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_config_option
@_data_option
@_actor_option
def erase(call_id: int | None, number: str | None, reason: str, yes: bool, config_path: Path, data: Path | None,
          actor: str) -> None:
    """Delete one call for good (recording and row), or with --number a person's every call and
    trace; tombstones, ledger and audit entries remain, without the number. With --number, a
    sealed store's recovery key is asked for (its numbers are found by their tags)."""
    if (call_id is None) == (number is None):
        raise click.UsageError("give a CALL_ID or --number, not both")
    store = _store(config_path, data)
    if number is None:
        if not yes:
            click.confirm(f"Erase call {call_id} and its recording for good?", abort=True)
        store.erase(call_id, actor, reason)
        click.echo(f"call {call_id} is erased")
        return
    from appliance.store.erasure import erase_subject

    opener = _opener(store.data_dir)
    if not yes:
        click.confirm(f"Erase every call of {number}, its contact and every trace of the number for good?", abort=True)
    report = erase_subject(store, number, actor, country_code=_country(config_path), opener=opener)
    click.echo(f"reference {report.reference}: {len(report.erased)} call(s) erased"
               f"{', the contact removed' if report.contact_removed else ''}")
    for call in report.held:
        click.echo(f"call {call['id']} is on hold ({call['reason']}): kept", err=True)
    for kept in report.recording:
        click.echo(f"call {kept} is being recorded: kept", err=True)
    if report.held or report.recording:
        sys.exit(1)


@main.command()
@_config_option
@_data_option
def clean(config_path: Path, data: Path | None) -> None:
    """Run one cleaner pass now: expire by purpose, evict the oldest while short of space."""
    report = _store(config_path, data).clean()
    click.echo(f"{report.expired} expired, {report.evicted} evicted; archive {report.archive_bytes / 1e6:.1f} MB, "
               f"{report.free_bytes / 1e6:.0f} MB free (floor {report.floor_bytes / 1e6:.0f} MB)")
    if report.alarm:
        click.echo(f"ALARM: {report.alarm}", err=True)
        sys.exit(1)


@main.command()
@click.argument("call_ids", type=int, nargs=-1, required=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="The bundle to write (a .zip file).")
@_config_option
@_data_option
@_actor_option
@click.option("--reason", help="Why restricted calls among them are needed (audited).")
@click.option("--language", type=click.Choice(DOCUMENT_LANGUAGES),
              help="The access report's language (default: the config's [privacy] language).")
def export(call_ids: tuple[int], out: Path, config_path: Path, data: Path | None, actor: str, reason: str | None,
           language: str | None) -> None:
    """Export calls with their evidence as one signed bundle, checkable offline by `callrec verify`;
    with the configuration, also the access report (report.html) and the controller's facts.
    A sealed store's recovery key is asked for: the bundle holds the recordings in the clear."""
    from appliance.signer import DeviceSigner
    from appliance.store.evidence import export_bundle
    from appliance.store.retention import StoreActionError
    from appliance.store.sealing import Opener
    from appliance.transparency import controller_facts

    catalogue, data_dir = _catalogue(config_path, data)
    secret = _recovery_secret(data_dir)
    opener = Opener(secret) if secret is not None else None
    signer = DeviceSigner(load_config(config_path).recorder.live_dir if config_path.exists() else None,
                          data_dir, apart=False, unlocker=lambda: secret)
    try:
        restricted = [call_id for call_id in call_ids if catalogue.get_call(call_id)["restricted"]]
        if restricted and not reason:
            raise StoreActionError(f"call(s) {', '.join(map(str, restricted))} restricted: give --reason to export them")
        for call_id in restricted:
            catalogue.add_audit(actor, "open-restricted", call_id, reason)
        customer = {}
        if config_path.exists():
            from web.report import render_report

            config = load_config(config_path)
            calls = [catalogue.get_call(call_id) for call_id in call_ids]
            numbers = ", ".join(dict.fromkeys(call["number"] for call in calls if call["number"]))
            customer = {"report": render_report(config, numbers, calls, language or config.privacy.language),
                        "controller": controller_facts(config)}
        manifest = export_bundle(catalogue, data_dir, list(call_ids), out, actor, opener=opener, signer=signer,
                                 **customer)
    except KeyError as exc:
        raise StoreActionError(f"there is no call {exc.args[0]}") from None
    except ValueError as exc:
        raise StoreActionError(str(exc)) from None
    click.echo(f"{out}: {len(manifest['calls'])} call(s), signed by device {manifest['device_fingerprint']}")


@main.command()
@click.argument("bundle", required=False, type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--key", "expected", help="With a bundle: the device fingerprint it must be signed by.")
@_config_option
@_data_option
def verify(bundle: Path | None, expected: str | None, config_path: Path, data: Path | None) -> None:
    """Check the store (every recording against its hash, the ledger's chain), or a BUNDLE offline.

    Exits with status 1 and names each mismatch when something does not match.
    """
    from appliance.store.evidence import verify_bundle, verify_store

    if bundle is not None:
        problems, manifest = verify_bundle(bundle, expected)
        what = f"{bundle}: {len(manifest['calls']) if manifest else 0} call(s), signed by device " \
               f"{manifest['device_fingerprint'] if manifest else '?'}"
    else:
        catalogue, data_dir = _catalogue(config_path, data)
        catalogue.keep_ledger()        # events another process left waiting, where this one may
        problems = verify_store(catalogue, data_dir)
        what = f"{data_dir}: {len(catalogue.calls('file IS NOT NULL'))} recording(s) and the ledger"
    for problem in problems:
        click.echo(f"MISMATCH: {problem}")
    click.echo(f"{what}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    sys.exit(1 if problems else 0)


@main.group()
def contacts() -> None:
    """The contacts directory that names callers."""


@contacts.command("import")
@click.argument("csv_file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@_config_option
@_data_option
@_actor_option
def contacts_import(csv_file: Path, config_path: Path, data: Path | None, actor: str) -> None:
    """Add or update contacts from a CSV file with columns number,name[,company,note] (audited).

    Nothing is imported if any row is wrong; each wrong row is named with its line number. A
    sealed store's recovery key is asked for.
    """
    from appliance.contacts import read_csv
    from appliance.store.directory import Directory

    country = _country(config_path)
    found = read_csv(csv_file, country)
    catalogue, data_dir = _catalogue(config_path, data)
    added, updated = Directory(catalogue, country, _opener(data_dir)).import_checked(found, actor, csv_file.name)
    click.echo(f"{csv_file}: {added} added, {updated} updated")


def _objections(config_path: Path, data: Path | None):
    from appliance.store.objections import Objections

    catalogue, data_dir = _catalogue(config_path, data)
    return Objections(catalogue, data_dir, _country(config_path))


@main.group("do-not-record")
def do_not_record() -> None:
    """The numbers whose calls are not recorded (the person objected: GDPR Art. 21)."""


@do_not_record.command("add")
@click.argument("number")
@click.option("--note", help="Why, or the request's reference (not the person's name).")
@_config_option
@_data_option
@_actor_option
def do_not_record_add(number: str, note: str | None, config_path: Path, data: Path | None, actor: str) -> None:
    """Stop recording the calls of NUMBER (from the next call; a running recorder sees it within seconds)."""
    added = _objections(config_path, data).add(number, actor, note)
    click.echo(f"{number} is {'now' if added else 'already'} on the do-not-record list")


@do_not_record.command("remove")
@click.argument("number")
@_config_option
@_data_option
@_actor_option
def do_not_record_remove(number: str, config_path: Path, data: Path | None, actor: str) -> None:
    """Record the calls of NUMBER again (the person withdrew the objection)."""
    if not _objections(config_path, data).remove(number, actor):
        raise StoreError(f"{number} is not on the do-not-record list")
    click.echo(f"{number} is off the do-not-record list")


@do_not_record.command("list")
@_config_option
@_data_option
def do_not_record_list(config_path: Path, data: Path | None) -> None:
    """The list: each number's last digits only (the list keeps no number), when, by whom, the note."""
    for entry in _objections(config_path, data).entries():
        click.echo(f"{entry['hint']:<6} {entry['added_at']}  {entry['added_by']:<16} {entry['note'] or ''}".rstrip())


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="Configuration to simulate (default: the bundled demo's two lines).")
@click.option("--data", type=click.Path(path_type=Path, file_okay=False),
              help="Data folder (default: ./callrec-data; never the configured one).")
@click.option("--every", type=click.FloatRange(min=1), default=30.0, show_default=True,
              help="Seconds between two calls on a line (the lines take turns half of it apart).")
@click.option("--seed", type=int, default=0, show_default=True, help="Picks the order of the calls.")
@click.option("--web", "with_web", is_flag=True,
              help="Serve the web UI beside it, from --config (whose data_dir must be the data folder).")
def demo(config_path: Path | None, data: Path | None, every: float, seed: int, with_web: bool) -> None:
    """Keep calls coming on simulated lines through the real recorder, until Ctrl-C (or SIGTERM):
    incoming and outgoing, with caller ID, a pause, an opt-out, a missed call now and then.

    Calls in progress are finalised before it returns (exit status 130 after Ctrl-C, 0 after SIGTERM).
    """
    from appliance.demoloop import run_demo
    from appliance.service import install_excepthook

    if with_web and config_path is None:
        raise click.UsageError("--web needs --config: the web UI's configuration, with its [web] section")
    install_excepthook()
    stop, interrupted = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: (interrupted.set(), stop.set()))
    run_demo(stop, config_path, data, every, seed, config_path if with_web else None)
    if interrupted.is_set():
        sys.exit(130)


@main.command()
@_config_option
def web(config_path: Path) -> None:
    """Serve the web UI (HTTPS, with a redirect from HTTP) until stopped (SIGTERM or Ctrl-C).

    Until an admin exists, prints the one-time setup code the first visitor needs.
    """
    from appliance.sdnotify import Watchdog, notify
    from web.server import WebServer

    server = WebServer(config_path)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    server.start()
    notify("READY=1", "STATUS=serving the web UI")
    watchdog = Watchdog(server.problem)
    watchdog.start()
    # In steps: a signal that lands on another thread is only handled once the main thread wakes.
    while not stop.wait(0.5):
        pass
    notify("STOPPING=1")
    watchdog.close()
    server.stop()


@main.command()
@_config_option
def signer(config_path: Path) -> None:
    """Sign with the device key for the web UI and the recorder, on a socket in the runtime folder,
    until stopped (SIGTERM or Ctrl-C). In a sealed store, signing waits for a user's login."""
    from appliance.sdnotify import Watchdog, notify
    from appliance.signer import start

    config = load_config(config_path)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    service = start(config.recorder.data_dir, config.recorder.live_dir)
    notify("READY=1", f"STATUS=signing{' (waits for a login)' if service.key.locked else ''}")
    watchdog = Watchdog(service.problem)
    watchdog.start()
    while not stop.wait(0.5):       # in steps: a signal is handled once the main thread wakes
        pass
    notify("STOPPING=1")
    watchdog.close()
    service.stop(timeout=service.beat_s)


@main.command("setup-code")
@_config_option
@click.option("--keep", is_flag=True, help="Print the code in force instead of a new one.")
def setup_code(config_path: Path, keep: bool) -> None:
    """Print a new one-time setup code for the web UI, valid 24 hours; the one before stops working
    (exit 1 once an admin exists)."""
    from web.accounts import Accounts

    code = Accounts(load_config(config_path).recorder.data_dir / "web").setup_code(renew=not keep)
    if code is None:
        click.echo("the web UI is set up already: log in with an admin account", err=True)
        sys.exit(1)
    click.echo(code)


@main.group()
def user() -> None:
    """Web UI accounts, for the technician: when the only admin forgot the password or lost the phone."""


def _accounts(config_path: Path, data: Path | None):
    from web.accounts import Accounts

    return Accounts(_data_dir(config_path, data) / "web")


@user.command("list")
@_config_option
@_data_option
def user_list(config_path: Path, data: Path | None) -> None:
    """List the web UI's users, their roles and lines, and whose logins wrong passwords slow down."""
    for entry in _accounts(config_path, data).users():
        lines = ", ".join(entry["lines"]) if entry["lines"] is not None else "all lines"
        slowed = f"  SLOWED (wrong passwords) until {entry['slowed_until']}" if entry["slowed_until"] else ""
        click.echo(f"{entry['name']:<24} {entry['role']:<10} {lines}{slowed}")


@user.command("password")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "supervisor", "staff"]),
              help="Create the user with this role if there is none by that name.")
@click.option("--recovery-key", "recovery", is_flag=True,
              help="A sealed store: ask for its recovery key and give NAME a key slot with the new password.")
@_config_option
@_data_option
def user_password(name: str, role: str | None, recovery: bool, config_path: Path, data: Path | None) -> None:
    """Set NAME's password (asked twice), clear its wrong-password delay and second factor (a lost
    phone) and end its sessions; with --role, create the user if needed. In a sealed store the
    user's key slot follows: with --recovery-key it opens with the new password; without, the old
    one is removed (the user gets a new one at their first login once the store is unlocked)."""
    from appliance.store.keyslots import KeySlots
    from appliance.store.sealing import is_sealed
    from web.accounts import AccountError
    from web.keyring import set_slot

    data_dir = _data_dir(config_path, data)
    sealed = is_sealed(data_dir)
    if recovery and not sealed:
        raise AccountError("--recovery-key: the store is not sealed")
    accounts = _accounts(config_path, data)
    found = [entry for entry in accounts.users() if entry["name"].lower() == name.lower()]
    if not found and role is None:
        raise AccountError(f"there is no user {name!r}: add --role to create one")
    # Checked first: a mistyped recovery key changes nothing.
    secret = KeySlots(data_dir).unlock_with_recovery(click.prompt("recovery key", hide_input=True)) if recovery else None
    password = click.prompt(f"new password for {name}", hide_input=True, confirmation_prompt=True)
    if found:
        accounts.update_user(found[0]["id"], password=password, unlock=True)
        accounts.clear_second_factor(found[0]["id"])
        user_id = found[0]["id"]
    else:
        user_id = accounts.add_user(name, password, role, None).id
    if sealed and not set_slot(data_dir, user_id, password, secret):
        click.echo(f"{name} has no key slot: their first login once the store is unlocked gives them one "
                   f"(or run again with --recovery-key)")
    click.echo(f"{name}: password set{'' if found else f', created as {role}'}")


@main.command()
@click.option("--user", "user_name", help="Give this web user a key slot now (their password is asked).")
@_config_option
@_data_option
def seal(user_name: str | None, config_path: Path, data: Path | None) -> None:
    """Seal the store at rest: recordings and personal data become readable only after a login or
    with the recovery key, shown once. Stop the recorder first. Resumable: run it again after a stop."""
    from appliance.keys import ensure_device_key
    from appliance.live import read_live
    from appliance.store.keyslots import KeySlots, recovery_text
    from appliance.store.personal import seal_fields
    from appliance.store.seal_store import seal_quarantine, seal_recordings
    from appliance.store.sealing import Sealer

    if config_path.exists() and read_live(load_config(config_path).recorder.live_dir) is not None:
        raise StoreError("the recorder is running: stop it first (sudo systemctl stop callrec-recorder), "
                         "then start it again once the store is sealed")
    data_dir = _data_dir(config_path, data)
    slots = KeySlots(data_dir)
    if slots.exists() and user_name is not None:
        raise StoreError("the store is sealed already: a user gets a key slot at their next login")
    if not slots.exists():
        owner = _check_password(config_path, data, user_name) if user_name is not None else None
        secret = slots.create()
        ensure_device_key(data_dir)         # sealed now, its clear copy removed
        click.echo("The store's RECOVERY KEY (shown only now: print it or write it down, keep it away from "
                   "the appliance):\n\n    " + recovery_text(secret) + "\n\n"
                   "It opens every recording, here and on the offload target, if all passwords are lost.")
        if owner is not None:
            slots.add(f"user:{owner[0].id}", owner[1], secret)
            click.echo(f"{user_name} unlocks the store at their login")
    if not (data_dir / "catalogue.db").exists():
        click.echo("done: a new store, sealed before its first call")
        return
    catalogue = Catalogue(data_dir)
    sealer = Sealer.load(data_dir)
    last = [0.0]

    def report(state) -> None:
        now = time.monotonic()
        if now - last[0] >= 1 or state.done == state.total:
            last[0] = now
            click.echo(f"sealed {state.done}/{state.total} recordings "
                       f"({state.bytes_done / 1e6:.1f} of {state.bytes_total / 1e6:.1f} MB)")
    state = seal_recordings(catalogue, data_dir, sealer, report)
    kept = seal_quarantine(data_dir, sealer)
    rows = seal_fields(catalogue, sealer)
    if not catalogue.checkpoint():
        click.echo("the catalogue's log still holds earlier pages (a reader is open): run callrec seal again", err=True)
    click.echo(f"done: {state.done - state.skipped} recordings sealed now, {state.skipped} were already; "
               f"{kept} quarantined spools sealed; personal fields sealed in {rows} rows")


def _check_password(config_path: Path, data: Path | None, name: str):
    """(principal, password) of a web user whose password is asked and checked."""
    password = click.prompt(f"{name}'s password", hide_input=True)
    return _accounts(config_path, data).authenticate(name, password), password
