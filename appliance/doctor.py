"""`callrec doctor`: checks the appliance from end to end and says, in plain words, what is wrong
and how to fix it.

Each check is a small function that returns `Result`s. While the recorder runs it holds the sound
cards, the GPIO pins and the modems, so their state is read from the live state it publishes
(`live.json`, replaced about twice a second); only when it is not running does the doctor open
the hardware itself.
"""

import errno
import json
import math
import os
import pwd
import shlex
import shutil
import socket
import sqlite3
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

from appliance.advice import config_advice
from appliance.store.catalogue import CATALOGUE_NAME
from appliance.clock import clock_synchronised, epoch_of
from appliance.config import Config, LineConfig, OffloadConfig, RecorderConfig, SipTrunkConfig, StoreConfig, WebConfig, load_config
from appliance.errors import CallrecError
from appliance.keys import certificate_fingerprint, fingerprint
from appliance.live import FRESH_S, read_live
from web.certificate import TLS_DIR, to_trust

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"
MARKS = {OK: "✔", WARN: "!", FAIL: "✘", INFO: "·"}

LIVE_POLL_S = 0.5
SILENT_DBFS = -75.0          # an idle line still carries hiss well above this; digital silence is far below
NO_SIGNAL_DBFS = -120.0      # below one step of 16-bit audio: every sample is zero
CLIP_SAMPLE = 32700          # within 0.02 dB of full scale
CLIP_FRACTION = 0.001        # more than one sample in a thousand at full scale is clipping
MODEM_TIMEOUT_S = 2.0
WEB_TIMEOUT_S = 3.0
MAIL_PROBE_S = 10.0
OFFLOAD_LATE_S = 3600       # a recording waiting this long means the target does not take them
OFFLOAD_PROBE_S = 5.0       # the offload target's time to connect and to answer, at each step of the test copy
UNITS = ("callrec-recorder.service", "callrec-web.service")


@dataclass(frozen=True)
class Result:
    """The outcome of one check: `status` is ok, warn, fail or info; `fix` says what to do."""

    status: str
    message: str
    fix: str | None = None

    def line(self) -> str:
        """The result as one line of the report."""
        return f"{MARKS[self.status]} {self.message}" + (f" — {self.fix}" if self.fix else "")


def render(results: list[Result]) -> str:
    """The report a technician reads: one line per check, then a summary."""
    failed = sum(r.status == FAIL for r in results)
    warned = sum(r.status == WARN for r in results)
    summary = ("all checks passed" if not failed and not warned
               else f"{failed} problem(s), {warned} warning(s)")
    return "\n".join([r.line() for r in results] + [summary])


def as_json(results: list[Result]) -> str:
    """The results for machines: {"ok": no failure, "checks": [{status, message, fix}, …]}."""
    return json.dumps({"ok": not any(r.status == FAIL for r in results),
                       "checks": [asdict(r) for r in results]}, indent=2, ensure_ascii=False)


# -- configuration and live state -------------------------------------------------------------------

def check_config(path: Path) -> tuple[Result, Config | None]:
    """Is the configuration file there and valid?"""
    try:
        config = load_config(path)
    except CallrecError as exc:
        return Result(FAIL, f"configuration: {exc}",
                      "correct the keys named above (docs/configuration.md describes each one)"), None
    return Result(OK, f"configuration {path} is valid ({len(config.line_names)} line(s))"), config


def watch_live(live_dir: Path, seconds: float) -> list[dict]:
    """Fresh live states read over `seconds` (none at all if the recorder is not running)."""
    first = read_live(live_dir)
    if first is None:
        return []
    states, deadline = [first], time.monotonic() + seconds
    while time.monotonic() + LIVE_POLL_S <= deadline:
        time.sleep(LIVE_POLL_S)
        if (state := read_live(live_dir)) is not None:
            states.append(state)
    return states


def line_states(states: list[dict], name: str) -> list[dict]:
    """One line's entries in the live states."""
    return [line for state in states for line in state.get("lines", []) if line.get("name") == name]


# -- services ---------------------------------------------------------------------------------------

def systemd_running() -> bool:
    """Is PID 1 systemd, so that the services are its units?"""
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd"
    except OSError:
        return False


def check_services(systemd: bool) -> list[Result]:
    """Are the recorder and web services active (when systemd manages them)?"""
    if not systemd:
        return [Result(INFO, "services are not managed by systemd on this machine (PID 1 is not systemd)")]
    results = []
    for unit in UNITS:
        try:
            state = subprocess.run(["systemctl", "is-active", unit], capture_output=True, text=True,
                                   timeout=10).stdout.strip() or "unknown"
        except (OSError, subprocess.TimeoutExpired) as exc:
            state = f"unknown ({exc})"
        if state == "active":
            results.append(Result(OK, f"service {unit} is active"))
        else:
            results.append(Result(FAIL, f"service {unit} is {state}",
                                  f"start it with `sudo systemctl enable --now {unit}`; "
                                  f"see why it stopped with `journalctl -u {unit} -n 50`"))
    return results


def check_recorder(states: list[dict], config_path: Path, live_dir: Path, systemd: bool) -> Result:
    """Is the recorder running, by its live state?"""
    if states:
        live = states[-1]
        return Result(OK, f"the recorder is running (pid {live.get('pid')}, version {live.get('version')})")
    fix = ("start it with `sudo systemctl start callrec-recorder.service`; see why it stopped with "
           "`journalctl -u callrec-recorder.service -n 50`" if systemd
           else f"start it with `callrec run --config {config_path}`")
    return Result(FAIL, f"the recorder is not running (no live state updated in the last "
                        f"{FRESH_S:g} s in {live_dir})", fix)


# -- sound cards ------------------------------------------------------------------------------------

def level_result(line: str, device: str, rms_dbfs: float | None, peak_dbfs: float | None,
                 clipping: bool, seconds: float) -> Result:
    """Is an input level plausible for a phone line: neither silent nor clipping?"""
    what = f"line {line}: input level of {device}"
    if rms_dbfs is None:
        return Result(WARN, f"{what} is not known yet (the recorder reports none)",
                      "run the doctor again in a few seconds")
    peak = peak_dbfs if peak_dbfs is not None else rms_dbfs
    figures = (f"no signal at all over {seconds:g} s" if peak <= NO_SIGNAL_DBFS
               else f"{rms_dbfs:.0f} dBFS, peak {peak:.0f} dBFS over {seconds:g} s")
    if clipping:
        return Result(FAIL, f"{what} is clipping ({figures})",
                      "turn the capture volume down (`alsamixer`, F4 for capture) or put an "
                      "attenuator between the tap and the card's input")
    if rms_dbfs < SILENT_DBFS:
        return Result(FAIL, f"{what} is silent ({figures})",
                      "check that the line cable is in the card's input (not its output) and that "
                      "capture is on and turned up (`alsamixer`, F4 for capture); even an idle line "
                      "carries some hiss")
    return Result(OK, f"{what} is plausible ({figures})")


def measure(pcm: bytes) -> tuple[float, float, bool]:
    """RMS and peak level (dBFS) of signed 16-bit audio, and whether it clips."""
    import numpy as np

    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    if len(samples) == 0:
        return -200.0, -200.0, False
    rms = float(np.sqrt(np.mean(samples ** 2))) / 32768
    peak = float(np.max(np.abs(samples))) / 32768
    clipped = float(np.mean(np.abs(samples) >= CLIP_SAMPLE))
    return _dbfs(rms), _dbfs(peak), clipped > CLIP_FRACTION


def _dbfs(amplitude: float) -> float:
    return 20 * math.log10(max(amplitude, 1e-10))


def check_sound_card(line: LineConfig, settings: RecorderConfig, seconds: float) -> list[Result]:
    """Open a line's capture device at the configured rate and listen to it for `seconds`."""
    import alsaaudio

    from appliance.analog.capture import open_capture

    rate, device = settings.sample_rate, line.capture
    period = rate * settings.period_ms // 1000
    try:
        pcm = open_capture(device, rate, 1, period)
    except alsaaudio.ALSAAudioError as exc:
        busy = "busy" in str(exc).lower()
        return [Result(FAIL, f"line {line.name}: sound card {device} cannot be opened ({exc})",
                       "another program holds it: is a recorder running outside its service? "
                       "(`fuser -v /dev/snd/*`)" if busy else
                       "check that the USB sound card is plugged in; `arecord -L` lists the names "
                       "ALSA knows, set up by firmware-config/asound.conf")]
    try:
        opened_rate = pcm.info().get("rate", rate)
        if opened_rate != rate:
            return [Result(FAIL, f"line {line.name}: sound card {device} opens at {opened_rate} Hz, "
                                 f"not at the configured {rate} Hz",
                           "name the card through a `plug` PCM (firmware-config/asound.conf) so "
                           "that ALSA converts the rate")]
        pcm_data = _read(pcm, int(seconds * rate), seconds + 2.0)
    finally:
        pcm.close()
    results = [Result(OK, f"line {line.name}: sound card {device} opens at {rate} Hz")]
    got = len(pcm_data) // 2
    if got < seconds * rate / 2:
        results.append(Result(FAIL, f"line {line.name}: sound card {device} delivered "
                                    f"{got / rate:.1f} s of audio in {seconds + 2:g} s",
                              "the card stalls: try another USB port or a powered hub; "
                              "see `dmesg` for USB errors"))
        return results
    results.append(level_result(line.name, device, *measure(pcm_data), seconds=seconds))
    return results


def _read(pcm, frames: int, timeout: float) -> bytes:
    """Up to `frames` frames from a capture PCM, for `timeout` seconds at most."""
    data, deadline = bytearray(), time.monotonic() + timeout
    while len(data) < frames * 2 and time.monotonic() < deadline:
        length, chunk = pcm.read()
        if length > 0:
            data += chunk[:length * 2]
        elif length != -errno.EPIPE:
            time.sleep(0.01)
    return bytes(data[:frames * 2])


def check_live_sound(line: LineConfig, entries: list[dict], seconds: float) -> list[Result]:
    """A line's sound card and level as the running recorder reports them."""
    if not entries:
        return [Result(FAIL, f"line {line.name}: the running recorder does not report this line",
                       "restart the recorder so that it reads the current configuration")]
    if not all(entry.get("capture_connected") for entry in entries):
        return [Result(FAIL, f"line {line.name}: the recorder cannot read sound card {line.capture}",
                        "check that the USB sound card is plugged in; the recorder reopens it by "
                        "itself (see `journalctl -u callrec-recorder.service`)")]
    levels = [e["level_dbfs"] for e in entries if e.get("level_dbfs") is not None]
    peaks = [e["peak_dbfs"] for e in entries if e.get("peak_dbfs") is not None]
    return [Result(OK, f"line {line.name}: sound card {line.capture} delivers audio to the recorder"),
            level_result(line.name, line.capture, max(levels, default=None), max(peaks, default=None),
                         any(e.get("clipping") for e in entries), seconds)]


# -- GPIO and modem ---------------------------------------------------------------------------------

def _pins(line: LineConfig) -> str:
    named = [(line.hook_pin, "hook"), (line.ring_pin, "ring"), (line.pause_button_pin, "pause button"),
             (line.agreement_button_pin, "agreement button")]
    return ", ".join(f"{pin} ({what})" for pin, what in named if pin is not None)


def check_inputs(line: LineConfig, pin_factory=None) -> Result:
    """Open a line's GPIO inputs through gpiozero and read the hook."""
    from appliance.analog.hook import LineInputs

    try:
        with warnings.catch_warnings():     # gpiozero warns of each pin library it tries: the result says it all
            warnings.simplefilter("ignore")
            inputs = LineInputs(line.hook_pin, line.hook_active, line.ring_pin, line.ring_active,
                                buttons={"pause": line.pause_button_pin, "agreement": line.agreement_button_pin},
                                pin_factory=pin_factory)
    except CallrecError as exc:
        return Result(FAIL, f"line {line.name}: {exc}",
                      "check the pin numbers in the configuration (BCM numbers) and that no other "
                      "program uses the pins (`gpioinfo`); on a Pi, python3-lgpio must be installed")
    try:
        hook = "off-hook" if inputs.off_hook() else "on-hook"
    finally:
        inputs.close()
    return Result(OK, f"line {line.name}: GPIO {_pins(line)} readable; the line is {hook}")


def check_live_hook(line: LineConfig, entries: list[dict]) -> Result:
    """A line's hook state as the running recorder reads it."""
    hook = {"on": "on-hook", "off": "off-hook"}.get(entries[-1].get("hook") if entries else None)
    if hook is None:
        return Result(WARN, f"line {line.name}: the recorder reports no hook state",
                      "run the doctor again in a few seconds")
    return Result(OK, f"line {line.name}: GPIO {_pins(line)} read by the recorder; the line is {hook}"
                      f" ({entries[-1].get('state')})")


def check_modem(line: LineConfig, timeout: float = MODEM_TIMEOUT_S) -> Result:
    """Open a line's caller-ID modem and see that it answers `AT`."""
    import serial

    device = line.modem
    try:
        port = serial.Serial(device, 115200, timeout=0.1, write_timeout=timeout, exclusive=True)
    except (serial.SerialException, OSError) as exc:
        if not Path(device).exists():
            return Result(FAIL, f"line {line.name}: modem {device} is not there",
                          "plug the modem in and check the udev rule in firmware-config/README.md")
        return Result(FAIL, f"line {line.name}: modem {device} cannot be opened ({exc})",
                      f"another program may hold the port (`fuser -v {device}`)")
    heard = b""
    try:
        port.reset_input_buffer()
        port.write(b"AT\r")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and b"OK" not in heard and b"ERROR" not in heard:
            heard += port.read(port.in_waiting or 1)
    except (serial.SerialException, OSError) as exc:
        heard = f"({exc})".encode()
    finally:
        port.close()
    if b"OK" in heard:
        return Result(OK, f"line {line.name}: modem {device} answers AT")
    return Result(FAIL, f"line {line.name}: modem {device} does not answer AT"
                        + (" (it says ERROR)" if b"ERROR" in heard else ""),
                  "check the USB cable and that the modem has power; unplug it and plug it in "
                  "again; a voice modem must answer OK to AT")


def check_live_modem(line: LineConfig, entries: list[dict]) -> Result:
    """A line's modem as the running recorder reports it."""
    if entries and entries[-1].get("modem_connected"):
        return Result(OK, f"line {line.name}: modem {line.modem} answers the recorder")
    return Result(FAIL, f"line {line.name}: modem {line.modem} does not answer the recorder",
                  "check the USB cable and that the modem has power; the recorder reopens it by "
                  "itself (see `journalctl -u callrec-recorder.service`)")


def check_live_trunk(name: str, entries: list[dict]) -> Result:
    """A SIP trunk's relay as the running recorder reports it."""
    if not entries:
        return Result(FAIL, f"sip trunk {name}: the running recorder does not report this trunk",
                      "restart the recorder so that it reads the current configuration")
    problem = entries[-1].get("problem")
    if problem:
        return Result(FAIL, f"sip trunk {name}: {problem}",
                      "restart the recorder (`sudo systemctl restart callrec-recorder`) and read why in "
                      "`journalctl -u callrec-recorder.service`")
    return Result(OK, f"sip trunk {name}: relaying and recording ({entries[-1].get('calls') or 0} call(s) now)")


def check_trunk_peers(trunk: SipTrunkConfig, seconds: float) -> list[Result]:
    """Each side's peer of a SIP trunk looked up as the relay does (RFC 3263) and asked with an
    OPTIONS request, from the side's address; and its STUN server, if it has one."""
    import asyncio

    from appliance.config import split_host_port
    from appliance.sip.keepalive import PEER_NAMES, ping
    from appliance.sip.locate import Locator
    from appliance.sip.transport import tls_settings

    results = []
    servers = [split_host_port(server) for server in trunk.dns_servers]
    for side, config in (("trunk", trunk.trunk), ("pbx", trunk.pbx)):
        here, _ = split_host_port(config.listen)
        if config.stun_server is not None:
            results.append(check_stun(trunk.name, side, config.stun_server, here))
        if config.peer is None:
            continue
        locator = Locator(*split_host_port(config.peer), config.transport.upper() if config.transport_chosen else None,
                          socket.AF_INET6 if ":" in here else socket.AF_INET, servers)
        asyncio.run(locator.refresh())
        where = f"sip trunk {trunk.name}: {PEER_NAMES[side]} {config.peer}"
        fix = (f"check `peer` in [sip_trunk.{side}] and the network to it; behind a NAT router, set `external` "
               f"and forward the SIP and RTP ports (docs/sip.md)")
        if locator.target is None:
            results.append(Result(FAIL, f"{where}: {locator.error}", fix))
            continue
        context = tls_settings(config, 0).client if locator.target.transport == "TLS" else None
        status, what = ping(locator.target.address, here, locator.target.transport.lower(), seconds, context,
                            locator.host)
        results.append(Result(FAIL, f"{where}: {what}", fix) if status is None else Result(OK, f"{where}: {what}"))
    return results


def check_stun(trunk: str, side: str, server: str, here: str) -> Result:
    """The public address a side's STUN server tells, asked from the side's address as the relay
    asks it."""
    import asyncio

    from appliance.config import split_host_port
    from appliance.sip.stun import PublicAddress

    public = PublicAddress(split_host_port(server), here, trunk)
    asyncio.run(public.refresh())
    if public.address is None:
        return Result(FAIL, f"sip trunk {trunk}: {public.error}",
                      f"check `stun_server` in [sip_trunk.{side}] and that the router lets UDP out to it, or set "
                      "`external` to the router's public address instead (docs/sip.md)")
    return Result(OK, f"sip trunk {trunk}: STUN server {server} says the public address of {here} is {public.address}")


# -- disk, clock, web -------------------------------------------------------------------------------

def check_data_dir(config: Config, systemd: bool) -> Result:
    """May the recorder write its data folder: as this user, and (under systemd) through its
    services' sandbox, which keeps every folder but those they name read-only?"""
    folder = Path(os.path.realpath(config.recorder.data_dir))      # as the units must name it
    fix = ("run `sudo ./install.sh` again after changing data_dir: it makes the folder, gives it to "
           "callrec and lets the services write there")
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = f"user {os.geteuid()}"
    try:
        writable = os.access(_existing(folder), os.W_OK | os.X_OK)
    except OSError:         # a folder above it that this user may not enter
        writable = False
    if not writable:
        return Result(FAIL, f"data folder {folder} is not writable by {user}", fix)
    closed = [unit for unit in UNITS if systemd and not _unit_may_write(unit, folder)]
    if closed:
        return Result(FAIL, f"data folder {folder} is read-only for {' and '.join(closed)} "
                            f"(ProtectSystem=strict without ReadWritePaths= for it)", fix)
    return Result(OK, f"data folder {folder} is writable by {user}")


def _unit_may_write(unit: str, folder: Path) -> bool:
    """Does a unit's sandbox leave `folder` writable? (A unit that is not installed has none.)"""
    try:
        shown = subprocess.run(["systemctl", "show", "-p", "LoadState", "-p", "ProtectSystem",
                                "-p", "ReadWritePaths", unit], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return True
    settings = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    if settings.get("LoadState") != "loaded" or settings.get("ProtectSystem") != "strict":
        return True
    # Quoted where a path holds a space; "-" marks a path that may be missing.
    try:
        listed = shlex.split(settings.get("ReadWritePaths", ""))
    except ValueError:
        listed = settings.get("ReadWritePaths", "").split()
    writable = {Path(path.lstrip("-+")) for path in listed}
    return any(path in writable for path in (folder, *folder.parents))


def check_disk(config: Config) -> Result:
    """Free space for recordings: above the floor, and how many hours of recording it holds."""
    from appliance.store.catalogue import Catalogue
    from appliance.store.retention import DEFAULT_BYTES_PER_HOUR, Store

    data_dir, settings, lines = config.recorder.data_dir, config.store, len(config.line_names)
    alarm = None
    if (data_dir / CATALOGUE_NAME).exists():
        store = Store.configured(Catalogue(data_dir), data_dir, config)
        try:
            per_hour, floor, free, alarm = (store.bytes_per_hour(), store.floor_bytes(),
                                            store.free_bytes(), store.alarm())
        finally:
            store.catalogue.close()
    else:                       # before the first start: the store's defaults
        per_hour = DEFAULT_BYTES_PER_HOUR
        floor = _floor(settings, per_hour, lines)
        free = shutil.disk_usage(_existing(data_dir)).free
    hours = free / (per_hour * lines)
    figures = (f"{free / 1e6:,.0f} MB free on {data_dir}: about {hours:,.0f} hours of recording on "
               f"{lines} line(s) at {per_hour / 1e6:.1f} MB per hour")
    if alarm is not None:
        return Result(FAIL, f"storage alarm: {alarm}",
                      "release calls that need not be held (`callrec release ID`) or add storage")
    if free < floor:
        return Result(FAIL, f"{figures}, under the floor of {floor / 1e6:,.0f} MB: the cleaner "
                            f"deletes the oldest calls to make room",
                      "give data_dir a larger disk, or lower store.min_free_mb and "
                      "store.min_free_hours")
    return Result(OK, f"{figures} (floor {floor / 1e6:,.0f} MB)")


def _floor(settings: StoreConfig, per_hour: float, lines: int) -> int:
    return int(max(settings.min_free_mb * 1_000_000, settings.min_free_hours * per_hour * lines))


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_clock(synchronised: Callable[[], bool] = clock_synchronised) -> Result:
    """Is the system clock synchronised? Recordings are evidence: their times must be right."""
    if synchronised():
        return Result(OK, "the clock is synchronised")
    return Result(FAIL, "the clock is not synchronised: calls are stamped with a time that may be "
                        "wrong (they are marked clock-unsynced)",
                  "connect the appliance to a network that reaches an NTP server and check "
                  "`timedatectl status` (System clock synchronized: yes); a Pi has no battery "
                  "clock, so an RTC module helps where there is no network")


def check_web(web: WebConfig, timeout: float = WEB_TIMEOUT_S, to_trust: Path | None = None) -> Result:
    """Does the web UI answer its health check over HTTPS? With the fingerprint of the certificate
    the shop's computers install (`to_trust`: the appliance's authority), else of the one served."""
    host = "127.0.0.1" if web.bind in ("0.0.0.0", "::", "") else web.bind
    url = f"https://{host if ':' not in host else f'[{host}]'}:{web.https_port}/healthz"
    # The device's own self-signed certificate: the chain cannot be verified, and need not be.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    fix = ("start it with `sudo systemctl start callrec-web.service` (see why it stopped with "
           "`journalctl -u callrec-web.service -n 50`), or with `callrec web` where systemd does not run it")
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as response:
            json.loads(response.read(64 * 1024))
    except urllib.error.HTTPError as exc:
        return Result(FAIL, f"the web UI at {url} answers HTTP {exc.code}", fix)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Result(FAIL, f"the web UI does not answer at {url} ({reason})", fix)
    except ValueError:
        return Result(FAIL, f"something other than the web UI answers at {url}",
                      f"free port {web.https_port} or set web.https_port to another port")
    if to_trust is not None and to_trust.is_file():
        # What a computer installing https://…/certificate.crt can check it against.
        return Result(OK, f"the web UI answers at {url}; the certificate to trust (/certificate.crt) has the "
                          f"SHA-256 fingerprint {certificate_fingerprint(to_trust.read_text())}")
    try:
        served = ssl.get_server_certificate((host, web.https_port), timeout=timeout)
    except (OSError, ValueError):
        return Result(OK, f"the web UI answers at {url}")
    return Result(OK, f"the web UI answers at {url}; its certificate's SHA-256 fingerprint is "
                      f"{certificate_fingerprint(served)}")


def _offload_target(offload: OffloadConfig) -> str:
    return offload.destination if offload.type == "rsync" else f"{offload.endpoint} bucket {offload.bucket}"


def check_offload_target(config: Config, timeout_s: float = OFFLOAD_PROBE_S) -> Result | None:
    """Does the offload target take a test file and let it be deleted, with the offloader's own key,
    host key check or credentials? (None without `[offload]`.) Each step gets `timeout_s`."""
    from appliance.offload import PROBE_NAME, OffloadError, ProbeLeftOver, probe

    offload = config.offload
    if offload is None:
        return None
    where = f"offload to {_offload_target(offload)}"
    started = time.monotonic()
    try:
        probe(offload, timeout_s)
    except ProbeLeftOver as exc:
        return Result(FAIL, f"{where}: a test file was copied there but cannot be deleted ({exc})",
                      f"{_offload_fix(offload, str(exc), deleting=True)}; then delete {PROBE_NAME} and "
                      f"{PROBE_NAME}.json there by hand")
    except OffloadError as exc:
        return Result(FAIL, f"{where}: the target does not take a test file ({exc})", _offload_fix(offload, str(exc)))
    done = f"{where}: a test file was copied there and deleted again ({time.monotonic() - started:.1f} s)"
    recorder_user = _other_owner(config.recorder.data_dir) if os.geteuid() == 0 else None
    if recorder_user is not None:
        return Result(WARN, f"{done}, but as root, who may read files the recorder's user ({recorder_user}) cannot",
                      f"check as that user: `sudo -u {recorder_user} callrec doctor` (the installed "
                      f"`sudo callrec doctor` runs as callrec)")
    return Result(OK, done)


def _other_owner(path: Path) -> str | None:
    """The user who owns `path` when it is not root (the recorder's user owns its data folder)."""
    try:
        uid = path.stat().st_uid
    except OSError:
        return None
    if uid == 0:
        return None
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _offload_fix(offload: OffloadConfig, problem: str, deleting: bool = False) -> str:
    """What to do about what the offload target answered: the first fix whose words are in it."""
    if offload.type == "rsync":
        login, _, folder = offload.destination.partition(":")
        user, _, host = login.rpartition("@")
        user, folder, port = user or "the login user", folder or "the home folder", offload.ssh_port
        key, known = offload.ssh_key_file, offload.known_hosts_file
        scan = (f"take it with `ssh-keyscan -p {port} {host} > {known}` and compare its fingerprint "
                f"(`ssh-keygen -lf {known}`) with the one the server's admin page shows")
        fixes = [
            (("cannot run",), "install rsync and ssh on the appliance (`sudo apt install rsync openssh-client`)"),
            (("host key is known for",), f"{known} holds no host key for {host} port {port}: {scan}"),
            (("Host key verification failed", "HOST IDENTIFICATION HAS CHANGED"),
             f"the server at {host} port {port} shows another host key than the one in {known}. If it was "
             f"reinstalled or replaced, {scan}; if not, another machine answers at that address: find out "
             f"which before sending it recordings"),
            (("Load key", "UNPROTECTED PRIVATE KEY"),
             f"ssh cannot use the key {key}: it must be readable by the recorder's user and by no one else "
             f"(`sudo chown callrec: {key} && sudo chmod 600 {key}`)"),
            (("Permission denied (publickey",),
             f"the server does not let {login} in with the key {key}: add the line of {key}.pub to "
             f"~/.ssh/authorized_keys of {user} on the server, and check the user in offload.destination"),
            (("Connection refused",), f"nothing answers on port {port} of {host}: check that the server is on "
                                      f"and that its SSH service runs on that port (offload.ssh_port)"),
            (("Could not resolve",), f"the name {host} is not known: check offload.destination, and that the "
                                     f"appliance's network has a DNS server that knows the name"),
            (("timed out", "No route to host", "Network is unreachable", "took longer than"),
             f"{host} does not answer: check that it is on and that the network lets the appliance reach "
             f"it on port {port}"),
            (("command not found", "rsync: not found"), "install rsync on the server (on a NAS: turn on its "
                                                        "rsync service)"),
            (("Permission denied", "Read-only file system", "No such file or directory"),
             f"{user} may not delete files in {folder} on the server: give it that right (the appliance "
             f"deletes the copies of erased and expired calls)" if deleting else
             f"{user} cannot write to {folder} on the server: check the folder in offload.destination and "
             f"give {user} the right to write there"),
        ]
    else:
        secret, key_id, bucket = offload.secret_key_file, offload.access_key_id, offload.bucket
        rights = f"on arn:aws:s3:::{bucket}/{offload.prefix}*"
        fixes = [
            (("cannot read",), f"make {secret} readable by the recorder's user and by no one else "
                               f"(`sudo chown callrec: {secret} && sudo chmod 600 {secret}`)"),
            (("NoSuchBucket",), f"there is no bucket {bucket} at {offload.endpoint}: check offload.bucket "
                                f"(the appliance does not make the bucket)"),
            (("InvalidAccessKeyId",), f"the store does not know the access key {key_id}: check "
                                      f"offload.access_key_id"),
            (("SignatureDoesNotMatch",), f"the secret key in {secret} is not the one of access key {key_id}: "
                                         f"put the right one there"),
            (("RequestTimeTooSkewed",), "the appliance's clock is too far off for the store to accept its "
                                        "signatures: see the clock check"),
            (("AuthorizationHeaderMalformed", "PermanentRedirect"),
             f"the bucket is not in region {offload.region}: set offload.region to the bucket's region"),
            (("AccessDenied",), f"the access key may put objects but not delete them: give it s3:DeleteObject "
                                f"{rights} as well (the appliance deletes the copies of erased and expired calls)"
                                if deleting else f"the access key may not put objects in {bucket}: give it "
                                                 f"s3:PutObject and s3:DeleteObject {rights}"),
            (("Connection refused",), f"nothing answers at {offload.endpoint}: check the address and port in "
                                      f"offload.endpoint and that the object store runs"),
            (("SSL", "CERTIFICATE"), f"{offload.endpoint} does not speak HTTPS with a certificate the appliance "
                                     f"trusts: check http:// or https:// in offload.endpoint; a store with a "
                                     f"certificate of its own needs it in /usr/local/share/ca-certificates "
                                     f"(then `sudo update-ca-certificates`)"),
            (("timed out", "Name or service not known", "name resolution", "No route to host", "unreachable"),
             f"{offload.endpoint} does not answer: check offload.endpoint and that the network lets the "
             f"appliance reach it"),
        ]
    for words, fix in fixes:
        if any(word in problem for word in words):
            return fix
    return "check the [offload] settings (docs/doctor-and-offload.md) and what the target's own log says"


def check_offload(config: Config, now: float | None = None, target_works: bool = False) -> Result | None:
    """Recordings not yet copied off the box (None without `[offload]`): a few just after calls
    are normal; one waiting for over an hour means the target does not take them, or did not
    until now (`target_works`: it took the doctor's test file)."""
    from appliance.store.catalogue import Catalogue

    offload = config.offload
    if offload is None:
        return None
    target = _offload_target(offload)
    data_dir = config.recorder.data_dir
    if not (data_dir / CATALOGUE_NAME).exists():
        return Result(OK, f"offload to {target}: nothing recorded yet")
    catalogue = Catalogue(data_dir)
    try:
        waiting, oldest = catalogue.waiting_offload()
    finally:
        catalogue.close()
    if not waiting:
        return Result(OK, f"offload to {target}: every recording is copied")
    age = (time.time() if now is None else now) - epoch_of(oldest)
    message = f"offload to {target}: {waiting} recording(s) waiting, the oldest for {age / 60:,.0f} min"
    if age > OFFLOAD_LATE_S and target_works:
        return Result(FAIL, message, f"the target works now: the recorder copies what waits at its next attempt, "
                                     f"at most offload.retry_max_s ({offload.retry_max_s:g} s) after its last "
                                     f"failure; if recordings still wait after that, its log says why "
                                     f"(`journalctl -u callrec-recorder.service | grep offload`)")
    if age > OFFLOAD_LATE_S:
        return Result(FAIL, message, "check that the target is up and reachable from the appliance (network, "
                                     "key or credentials); the recorder's log says what it answers "
                                     "(`journalctl -u callrec-recorder.service | grep offload`)")
    return Result(OK, message)


def check_alarms(config: Config, timeout_s: float = MAIL_PROBE_S) -> Result:
    """Where alarms go: with a mail server, connect, encrypt, check its certificate and log in as a
    mail would (nothing is sent); the password file must be the appliance's only."""
    from appliance.mail import MailError, probe

    alarms = config.alarms
    if alarms is None or alarms.smtp_host is None:
        if alarms is not None and alarms.webhook and config.webhook is not None:
            return Result(OK, "alarms go to the webhook only (no mail server in [alarms])")
        return Result(INFO, "alarms are not sent anywhere: only the fault LED and the status page show them",
                      "add an [alarms] table with a mail server (docs/alarms.md), or set it on the settings page")
    where = f"alarm mail through {alarms.smtp_host}:{alarms.port}"
    if alarms.password_file is not None and alarms.password_file.stat().st_mode & 0o037:
        return Result(FAIL, f"{where}: the password file {alarms.password_file} is readable by others",
                      f"chmod 640 {alarms.password_file}; chgrp callrec {alarms.password_file}")
    try:
        probe(alarms.model_copy(update={"timeout_s": min(alarms.timeout_s, timeout_s)}))
    except MailError as exc:
        return Result(FAIL, f"{where}: {exc}", "fix [alarms] (docs/alarms.md), then send a test e-mail from the "
                                               "settings page")
    login = f", logged in as {alarms.username}" if alarms.username else ""
    return Result(OK, f"{where} works ({alarms.security.upper()}, certificate trusted{login}); to "
                      f"{', '.join(alarms.to)}")


# -- secrets and the signer -------------------------------------------------------------------------

PRIVATE, GROUP_READS = 0o600, 0o640


def secret_files(config: Config) -> list[tuple[Path, int, str, bool]]:
    """Each secret file the appliance has, with the most its mode may allow, what it is and
    whether the recorder's user must own it (a 0600 file of the web UI's user is the web's). The device
    key, sealed or not, and the key slots are their owner's alone; the audit and subject keys are
    the group's too (the web UI writes the audit trail), and so is the alarm mail's password (both
    the recorder and the web UI send alarm mails); the webhook, offload and SSH secrets are their
    owner's only: the web UI, in the recorder's group, may not read them."""
    from appliance.keys import AUDIT_KEY_FILE, KEY_FILE, SEALED_KEY_FILE, SUBJECTS_KEY_FILE
    from appliance.store.keyslots import SLOTS_FILE

    data = Path(config.recorder.data_dir)
    files = [(data / KEY_FILE, PRIVATE, "the device key", True),
             (data / SEALED_KEY_FILE, PRIVATE, "the sealed device key", True),
             (data / SLOTS_FILE, PRIVATE, "the store's key slots", False),
             (data / AUDIT_KEY_FILE, GROUP_READS, "the audit key", False),
             (data / SUBJECTS_KEY_FILE, GROUP_READS, "the subject key", False)]
    if config.webhook is not None:
        files.append((config.webhook.secret_file, PRIVATE, "webhook.secret_file", True))
    if config.offload is not None:
        files += [(path, PRIVATE, f"offload.{key}", True) for key, path in config.offload.secret_files().items()
                  if key != "known_hosts_file"]
    if config.alarms is not None and config.alarms.password_file is not None:
        files.append((config.alarms.password_file, GROUP_READS, "alarms.password_file", False))
    return files


def check_secret_files(config: Config) -> list[Result]:
    """Is each secret file closed to whom it should be (group and others beyond what is meant)?"""
    results = []
    try:
        recorder = Path(config.recorder.data_dir).stat().st_uid       # the data folder's owner
    except OSError:
        recorder = None
    for path, allowed, what, recorders in secret_files(config):
        try:
            status = path.stat()
            mode = status.st_mode & 0o777
        except FileNotFoundError:
            continue
        except OSError as exc:
            results.append(Result(WARN, f"{what} {path} cannot be checked: {exc.strerror or exc}",
                                  "run the doctor as root: sudo callrec doctor"))
            continue
        if mode & ~allowed:
            results.append(Result(FAIL, f"{what} {path} has mode {mode:04o}: more can read it than should",
                                  f"chmod {allowed:o} {path}"))
        elif recorders and recorder is not None and status.st_uid != recorder:
            owner = _user_name(recorder)
            results.append(Result(FAIL, f"{what} {path} belongs to {_user_name(status.st_uid)}, not to the "
                                        f"recorder's user {owner}", f"chown {owner} {path}"))
    if not results:
        results.append(Result(OK, "secret files (device key, audit key, webhook, offload and mail secrets) "
                                  "are closed to whom they should be"))
    return results


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_sealed(config: Config) -> Result:
    """Is the store sealed, so that a stolen card gives away no recording nor personal data?"""
    from appliance.store.sealing import is_sealed

    data = Path(config.recorder.data_dir)
    if is_sealed(data):
        return Result(OK, "the store is sealed: recordings and personal data on the card open only after a login")
    return Result(WARN, f"the store in {data} is not sealed: whoever takes the SD card or an offloaded copy can "
                        "play every recording and read every number (GDPR Art. 32)",
                  "stop the recorder, run `sudo callrec seal`, keep the recovery key it shows (docs/security.md)")


LEDGER_LATE_S = 120     # events waiting longer than this for the ledger: its writer is not working


def check_ledger(config: Config) -> Result:
    """Does only the recorder's user write the ledger, and are recorded events put on it?"""
    from appliance.store import ledgerkeeper

    data = Path(config.recorder.data_dir)
    if not (data / CATALOGUE_NAME).exists():
        return Result(OK, "the ledger: nothing recorded yet")
    try:
        if found := ledgerkeeper.problems(data):
            return Result(FAIL, f"the ledger: {found[0]}", "see docs/store.md, \"Who writes the ledger\"")
        with closing(sqlite3.connect(f"{(data / CATALOGUE_NAME).as_uri()}?mode=ro", uri=True, timeout=5)) as db:
            waiting, oldest = db.execute("SELECT COUNT(*), MIN(at) FROM ledger_queue").fetchone()
    except (OSError, sqlite3.Error) as exc:
        return Result(WARN, f"the ledger cannot be checked: {exc}", "run the doctor as root: sudo callrec doctor")
    if waiting and time.time() - epoch_of(oldest) > LEDGER_LATE_S:
        return Result(WARN, f"{waiting} event(s) wait to be put on the ledger, the oldest since {oldest}",
                      "the signer writes them: `systemctl status callrec-signer` says why it does not")
    return Result(OK, "the ledger is written by the recorder's user only, and nothing waits to be put on it")


def check_signer(config: Config, systemd: bool) -> Result:
    """Does the signer answer, and can it sign now (a sealed store: after a login)?"""
    from appliance.signer import DeviceSigner, SignerError, SignerUnavailable
    from appliance.store.sealing import is_sealed

    fix = ("start it with `sudo systemctl enable --now callrec-signer.service`; see why it stopped with "
           "`journalctl -u callrec-signer.service -n 50`")
    try:
        status = DeviceSigner(config.recorder.live_dir, config.recorder.data_dir).over_socket({"command": "status"})
    except SignerUnavailable as exc:
        if systemd or is_sealed(config.recorder.data_dir):
            return Result(FAIL, f"the signer does not answer: {exc}", fix)
        return Result(INFO, "no signer runs: bundles and manifests are signed from the key file, by whoever may read it")
    except SignerError as exc:
        return Result(FAIL, f"the signer: {exc}", fix)
    if status.get("locked"):
        return Result(WARN, "the signer waits for a login: exports and offload manifests are signed once a user "
                            "has logged in to the web UI since it started", "log in to the web UI")
    return Result(OK, f"the signer signs as device {fingerprint(status['public']) if status.get('public') else '?'}")


# -- all checks -------------------------------------------------------------------------------------

def check_advice(config: Config) -> list[Result]:
    """What the settings do that data-protection authorities advise against (see `appliance.advice`)."""
    found = config_advice(config)
    if not found:
        return [Result(OK, "retention and recording follow the authorities' advice for each purpose")]
    return [Result(WARN, str(advice), "change it in the settings, or record why the shop needs it in its "
                   "records of processing") for advice in found]


def run_checks(config_path: Path, seconds: float = 3.0, *,
               clock: Callable[[], bool] = clock_synchronised, systemd: bool | None = None) -> list[Result]:
    """Every check, in the order a technician works through them."""
    result, config = check_config(config_path)
    if config is None:
        return [result]
    results = [result, *check_advice(config)]
    systemd = systemd_running() if systemd is None else systemd
    live_dir = config.recorder.live_dir
    states = watch_live(live_dir, seconds)
    results += check_services(systemd)
    results.append(check_recorder(states, config_path, live_dir, systemd))
    for line in config.line:
        entries = line_states(states, line.name)
        if states:
            results += check_live_sound(line, entries, seconds)
            results.append(check_live_hook(line, entries))
            if line.modem is not None:
                results.append(check_live_modem(line, entries))
        else:
            results += check_sound_card(line, config.recorder, seconds)
            results.append(check_inputs(line))
            if line.modem is not None:
                results.append(check_modem(line))
    for trunk in config.sip_trunk:
        if states:
            results.append(check_live_trunk(trunk.name, line_states(states, trunk.name)))
        results += check_trunk_peers(trunk, seconds)
    results.append(check_data_dir(config, systemd))
    results += check_secret_files(config)
    results.append(check_sealed(config))
    results.append(check_signer(config, systemd))
    results.append(check_ledger(config))
    results.append(check_disk(config))
    if (target := check_offload_target(config)) is not None:
        results += [target, check_offload(config, target_works=target.status != FAIL)]
    results.append(check_clock(clock))
    results.append(check_alarms(config))
    try:
        trusted = to_trust(config.recorder.data_dir / "web" / TLS_DIR)
    except PermissionError:     # the web UI's own folder, where it runs as a user of its own: the served one
        trusted = None
    results.append(check_web(config.web, to_trust=trusted))
    return results
