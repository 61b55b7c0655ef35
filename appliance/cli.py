"""The `callrec` command."""

import json
import logging
import signal
import sys
import threading
from pathlib import Path

import click

from appliance import __version__
from appliance.catalogue import Catalogue, public_fields
from appliance.config import DEFAULT_CONFIG, DEFAULT_DATA_DIR, load_config
from appliance.errors import CallrecError

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
    return DEFAULT_DATA_DIR


@main.command()
@_config_option
def run(config_path: Path) -> None:
    """Record the configured lines until stopped (SIGTERM or Ctrl-C)."""
    from appliance.recorder import Recorder

    config = load_config(config_path)
    recorder = Recorder(config)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    recorder.start()
    log.info("recording %d line(s) into %s", len(recorder.lines), config.recorder.data_dir)
    stop.wait()
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
    from appliance.simulate import run_simulation

    calls = run_simulation(scenario, config_path, data)
    for call in calls:
        click.echo(f"call {call['id']}: {call['line']} {call['direction']} {call['state']} "
                   f"{call['duration_s'] or 0:.1f} s {call['file'] or '(no audio)'}")


@main.command()
@_config_option
@click.option("--data", type=click.Path(path_type=Path, file_okay=False),
              help="Data folder (default: the config's).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
def calls(config_path: Path, data: Path | None, as_json: bool) -> None:
    """List the catalogue's calls, oldest first."""
    data_dir = _data_dir(config_path, data)
    if not (data_dir / "catalogue.db").exists():
        raise click.ClickException(f"no catalogue in {data_dir}")
    catalogue = Catalogue(data_dir)
    rows = [public_fields(row) for row in catalogue.calls()]
    catalogue.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['id']:>6}  {row['started_at']}  {row['line']:<10} {row['direction']:<9}"
                   f"{row['state']:<12}{row['duration_s'] or 0:>8.1f} s  {row['number'] or ''}")
