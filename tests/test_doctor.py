"""`callrec doctor` on simulated hardware: ALSA file-plugin capture PCMs for the sound cards,
gpiozero's MockFactory for the pins, ptys for the modems, a live-state file as the running
recorder writes it, a real HTTPS server for the web UI. Each failure it detects is shown once."""

import datetime
import hashlib
import http.server
import json
import os
import pty
import pwd
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path

import numpy as np
import pytest

from appliance import doctor, signer
from appliance.signer import DeviceSigner
from appliance.store.keyslots import KeySlots
from appliance.config import load_config
from appliance.live import write_atomically
from conftest import RATE, callrec, free_port, tone, write_config

SECONDS = "0.5"


@pytest.fixture
def hardware(tmp_path):
    """Sound cards whose input is silence, a full-scale square wave or a speech-like tone (plain
    files: they are read at once, so no test waits for audio in real time)."""
    n = 2 * RATE
    sounds = {
        "card_silence": np.zeros(n),
        "card_square": np.sign(np.sin(2 * np.pi * 300 * np.arange(n) / RATE)),
        # a 440 Hz voice whose loudness rises and falls four times a second, as syllables do
        "card_speech": tone(440, 2.0, 0.3) * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * np.arange(n) / RATE)),
    }
    rc = ""
    for name, samples in sounds.items():
        raw = tmp_path / f"{name}.raw"
        raw.write_bytes((np.clip(samples, -1, 32767 / 32768) * 32768).astype("<i2").tobytes())
        rc += (f'pcm.{name} {{ type file\n slave.pcm {{ type null }}\n file "/dev/null"\n'
               f' infile "{raw}"\n format "raw" }}\n')
    (tmp_path / "asoundrc").write_text(rc)
    return {**os.environ, "ALSA_CONFIG_PATH": f"/usr/share/alsa/alsa.conf:{tmp_path / 'asoundrc'}",
            "GPIOZERO_PIN_FACTORY": "mock"}


def config_file(folder: Path, web_port: int | None = None, recorder: dict | None = None,
                store: str = "", **line) -> Path:
    """An appliance.toml with line t1 on card_speech, its data in `folder`/data."""
    path = write_config(folder, recorder={"data_dir": str(folder / "data"), **(recorder or {})},
                        line={"capture": "card_speech", **line})
    path.write_text(path.read_text() + f"\n[web]\nhttps_port = {web_port or free_port()}\n" + store)
    return path


def run_doctor(config: Path, env: dict) -> tuple[int, dict[str, dict]]:
    """Run `callrec doctor --json`; return its exit status and its checks by message."""
    result = callrec("doctor", "--config", str(config), "--seconds", SECONDS, "--json", check=False,
                     env=env)
    report = json.loads(result.stdout)
    assert report["ok"] == (result.returncode == 0)
    return result.returncode, report["checks"]


def find(checks: list[dict], words: str) -> dict:
    """The one check whose message contains `words`."""
    [check] = [c for c in checks if words in c["message"]]
    return check


def test_an_invalid_config_is_the_only_failure_reported_and_names_the_key(tmp_path, hardware):
    config = config_file(tmp_path)
    config.write_text(config.read_text().replace("hook_active", "hook_activ"))
    status, checks = run_doctor(config, hardware)
    assert status == 1
    [check] = checks
    assert check["status"] == "fail" and "line[0].hook_activ: unknown key" in check["message"]
    assert check["fix"]


@pytest.mark.parametrize("card, status, words", [
    ("card_silence", "fail", "is silent (no signal at all"),
    ("card_square", "fail", "is clipping"),
    ("card_speech", "ok", "is plausible"),
])
def test_the_input_level_is_judged_over_the_seconds_listened(tmp_path, hardware, card, status, words):
    code, checks = run_doctor(config_file(tmp_path, capture=card), hardware)
    assert find(checks, f"sound card {card} opens at 8000 Hz")["status"] == "ok"
    level = find(checks, f"input level of {card}")
    assert level["status"] == status and words in level["message"]
    assert (level["fix"] is None) == (status == "ok")
    assert code == 1          # the recorder is not running here, among others


def test_a_missing_sound_card_is_named_with_the_fix(tmp_path, hardware):
    _, checks = run_doctor(config_file(tmp_path, capture="callrec_capture"), hardware)
    check = find(checks, "sound card callrec_capture cannot be opened")
    assert check["status"] == "fail" and "plugged in" in check["fix"]
    assert not [c for c in checks if "input level" in c["message"]]


def test_the_gpio_pins_are_read_and_a_pin_that_cannot_be_used_fails(tmp_path, hardware):
    _, checks = run_doctor(config_file(tmp_path, pause_button_pin=5), hardware)
    check = find(checks, "GPIO 17 (hook), 27 (ring), 5 (pause button) readable")
    assert check["status"] == "ok" and check["message"].endswith("the line is on-hook")
    _, checks = run_doctor(config_file(tmp_path, hook_pin=99), hardware)
    check = find(checks, "cannot use GPIO pin 99 as the hook input")
    assert check["status"] == "fail" and "pin numbers" in check["fix"]


def test_the_hook_state_is_read_from_the_pin(tmp_path):
    from gpiozero.pins.mock import MockFactory, MockPin

    class Driven(MockPin):
        """A pin that an opto-coupler drives: its level does not follow the pull resistor."""

        def _set_pull(self, value):
            self._pull = value

    factory = MockFactory(pin_class=Driven)
    line = load_config(config_file(tmp_path)).line[0]
    try:
        factory.pin(17).drive_low()           # active low: off-hook
        assert doctor.check_inputs(line, factory).message.endswith("the line is off-hook")
        factory.pin(17).drive_high()
        assert doctor.check_inputs(line, factory).message.endswith("the line is on-hook")
    finally:
        factory.reset()


class Pty:
    """The modem's side of a pty; with `answer`, a thread answers each AT command with OK."""

    def __init__(self, answer: bool):
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._answer, daemon=True) if answer else None
        if self.thread:
            self.thread.start()

    def _answer(self):
        import select
        heard = b""
        while not self.done.is_set():
            if select.select([self.master], [], [], 0.05)[0]:
                heard += os.read(self.master, 1024)
                while b"\r" in heard:
                    command, heard = heard.split(b"\r", 1)
                    if command.strip().upper().startswith(b"AT"):
                        os.write(self.master, command + b"\r\r\nOK\r\n")   # echo, then OK

    def close(self):
        self.done.set()
        if self.thread:
            self.thread.join()
        os.close(self.master)
        os.close(self.slave)


@pytest.mark.parametrize("answer", [True, False])
def test_the_modem_must_answer_at(tmp_path, hardware, answer):
    modem = Pty(answer)
    try:
        started = time.monotonic()
        _, checks = run_doctor(config_file(tmp_path, modem=modem.path), hardware)
        took = time.monotonic() - started
    finally:
        modem.close()
    if answer:
        assert find(checks, f"modem {modem.path} answers AT")["status"] == "ok"
    else:
        check = find(checks, f"modem {modem.path} does not answer AT")
        assert check["status"] == "fail" and "USB cable" in check["fix"]
        assert took < 10


def test_a_modem_that_is_not_plugged_in(tmp_path, hardware):
    _, checks = run_doctor(config_file(tmp_path, modem="/dev/ttyCallerID"), hardware)
    check = find(checks, "modem /dev/ttyCallerID is not there")
    assert check["status"] == "fail" and "udev rule" in check["fix"]


def test_free_space_and_hours_of_recording_left_against_the_floor(tmp_path):
    config = load_config(config_file(tmp_path))
    result = doctor.check_disk(config)
    free = shutil.disk_usage(tmp_path).free
    assert result.status == "ok"
    assert f"about {free / 8_000_000:,.0f} hours of recording on 1 line(s)" in result.message
    floor_mb = free // 1_000_000 + 1000
    config = load_config(config_file(tmp_path, store=f"[store]\nmin_free_mb = {floor_mb}\n"))
    result = doctor.check_disk(config)
    assert result.status == "fail" and f"under the floor of {floor_mb:,} MB" in result.message
    assert "min_free_mb" in result.fix


def test_a_storage_alarm_in_the_catalogue_is_a_failure(tmp_path):
    from appliance.store.catalogue import Catalogue
    from appliance.store.retention import Store

    config = load_config(config_file(tmp_path, store="[store]\nmin_free_mb = 1000000000\n"))
    store = Store(Catalogue(config.recorder.data_dir), config.recorder.data_dir, config.purpose, config.store)
    store.clean()                   # nothing to evict: the alarm is raised
    store.catalogue.close()
    result = doctor.check_disk(config)
    assert result.status == "fail" and result.message.startswith("storage alarm: free space")
    assert "callrec release" in result.fix


@pytest.fixture
def open_folder():
    """A folder every user may enter (pytest's own are root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="callrec-doctor-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv, to run the doctor as another user")
def test_a_data_folder_the_user_may_not_write_fails_with_the_fix(open_folder):
    config = config_file(open_folder)
    data = open_folder / "data"
    data.mkdir(mode=0o755)          # root's, as a folder made by hand is
    nobody = pwd.getpwnam("nobody")

    def checked_as_nobody() -> dict:
        result = subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                                 "--", sys.executable, "-m", "appliance", "doctor", "--config", str(config),
                                 "--seconds", SECONDS, "--json"], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock", "HOME": str(open_folder)})
        return find(json.loads(result.stdout)["checks"], "data folder")

    check = checked_as_nobody()
    assert check["status"] == "fail" and check["message"] == f"data folder {data} is not writable by nobody"
    assert check["fix"].startswith("run `sudo ./install.sh` again after changing data_dir")
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    assert checked_as_nobody() == {"status": "ok", "message": f"data folder {data} is writable by nobody", "fix": None}


def test_an_unsynchronised_clock_fails_because_times_are_evidence():
    assert doctor.check_clock(lambda: True).status == "ok"
    result = doctor.check_clock(lambda: False)
    assert result.status == "fail" and "not synchronised" in result.message
    assert "timedatectl" in result.fix


def live_state(folder: Path, age_s: float = 0.0, **line) -> None:
    """Write the live state the running recorder publishes, `age_s` seconds old."""
    stamp = datetime.datetime.fromtimestamp(time.time() - age_s, datetime.timezone.utc)
    state = {"updated_at": stamp.isoformat().replace("+00:00", "Z"), "pid": 4242, "version": "0.1.0",
             "clock_synced": True, "lines": [{
                 "name": "t1", "state": "in_call", "hook": "off", "call_id": 7,
                 "call_started_at": None, "direction": "incoming", "number": None,
                 "level_dbfs": -30.0, "peak_dbfs": -12.0, "clipping": False,
                 "capture_connected": True, "modem_connected": True, **line}]}
    run = folder / "data" / "run"
    run.mkdir(parents=True, exist_ok=True)
    write_atomically(run / "live.json", json.dumps(state))
    os.utime(run / "live.json", (time.time() - age_s,) * 2)


def test_while_the_recorder_runs_its_live_state_is_read_and_no_device_is_opened(tmp_path, hardware):
    # Devices that do not exist: opening any of them would fail.
    config = config_file(tmp_path, capture="callrec_capture", hook_pin=99, modem="/dev/ttyCallerID")
    live_state(tmp_path)
    _, checks = run_doctor(config, hardware)
    assert find(checks, "the recorder is running (pid 4242")["status"] == "ok"
    assert find(checks, "not managed by systemd")["status"] == "info"
    assert find(checks, "sound card callrec_capture delivers audio to the recorder")["status"] == "ok"
    assert find(checks, "input level of callrec_capture is plausible (-30 dBFS, peak -12 dBFS")["status"] == "ok"
    assert find(checks, "the line is off-hook (in_call)")["status"] == "ok"
    assert find(checks, "modem /dev/ttyCallerID answers the recorder")["status"] == "ok"
    assert not [c for c in checks if "cannot" in c["message"] or "not there" in c["message"]]


def test_faults_the_running_recorder_reports(tmp_path, hardware):
    config = config_file(tmp_path, modem="/dev/ttyCallerID")
    live_state(tmp_path, capture_connected=False, modem_connected=False)
    _, checks = run_doctor(config, hardware)
    assert find(checks, "the recorder cannot read sound card card_speech")["status"] == "fail"
    assert find(checks, "modem /dev/ttyCallerID does not answer the recorder")["status"] == "fail"
    live_state(tmp_path, peak_dbfs=0.0, clipping=True)
    _, checks = run_doctor(config, hardware)
    assert find(checks, "input level of card_speech is clipping")["status"] == "fail"


def test_without_systemd_a_stale_live_state_means_the_recorder_is_not_running(tmp_path, hardware):
    live_state(tmp_path, age_s=10)
    _, checks = run_doctor(config_file(tmp_path), hardware)
    check = find(checks, "the recorder is not running")
    assert check["status"] == "fail" and "callrec run --config" in check["fix"]
    assert find(checks, "sound card card_speech opens at 8000 Hz")["status"] == "ok"   # opened itself


def test_with_systemd_each_service_must_be_active(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(
        '#!/bin/sh\n[ "$2" = callrec-recorder.service ] && { echo active; exit 0; }\necho inactive; exit 3\n')
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    recorder, web = doctor.check_services(systemd=True)
    assert recorder.status == "ok" and recorder.message == "service callrec-recorder.service is active"
    assert web.status == "fail" and web.message == "service callrec-web.service is inactive"
    assert "journalctl -u callrec-web.service" in web.fix


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": "ok"}).encode()
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def web_ui(tmp_path):
    """An HTTPS server with a self-signed certificate answering /healthz, as the web UI does."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "callrec.local")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_the_web_ui_must_answer_its_health_check_over_https(tmp_path, web_ui):
    up = doctor.check_web(load_config(config_file(tmp_path, web_port=web_ui)).web)
    served = hashlib.sha256(ssl.PEM_cert_to_DER_cert((tmp_path / "cert.pem").read_text())).hexdigest().upper()
    assert up.status == "ok" and up.message == (f"the web UI answers at https://127.0.0.1:{web_ui}/healthz; its "
                                                f"certificate's SHA-256 fingerprint is {':'.join(re.findall('..', served))}")
    closed = free_port()
    down = doctor.check_web(load_config(config_file(tmp_path, web_port=closed)).web, timeout=1)
    assert down.status == "fail" and f"does not answer at https://127.0.0.1:{closed}/healthz" in down.message
    assert "systemctl start callrec-web.service" in down.fix


def test_a_healthy_appliance_passes_every_check_and_a_broken_one_exits_non_zero(tmp_path, hardware, web_ui):
    config = config_file(tmp_path, web_port=web_ui, record_one_in=4)     # occasional, as advised
    live_state(tmp_path)
    data = tmp_path / "data"
    assert doctor.check_sealed(load_config(config)).status == "warn"
    secret = KeySlots(data).create()        # sealed, as install.sh leaves a new box
    service = signer.start(data, data / "run")
    try:
        DeviceSigner(data / "run", data).unlock(secret)            # someone logged in since the start
        results = doctor.run_checks(config, 0.5, clock=lambda: True, systemd=False)
    finally:
        service.stop(timeout=2)
    assert [r.line() for r in results if r.status in ("fail", "warn")] == []
    assert "✔ the store is sealed" in doctor.render(results)
    assert doctor.render(results).endswith("all checks passed")
    (tmp_path / "data" / "run" / "live.json").unlink()
    result = callrec("doctor", "--config", str(config), "--seconds", SECONDS, check=False, env=hardware)
    assert result.returncode == 1
    assert "✘ the recorder is not running" in result.stdout
    assert "✔ line t1: input level of card_speech is plausible" in result.stdout


def test_recordings_waiting_for_offload_over_an_hour_are_a_failure(tmp_path):
    from appliance.store.catalogue import Catalogue
    from appliance.clock import iso_utc
    from conftest import record_call

    secret = tmp_path / "s3.secret"
    secret.write_text("not used")
    path = write_config(tmp_path, recorder={"data_dir": str(tmp_path / "data")})
    path.write_text(path.read_text() + f'\n[offload]\ntype = "s3"\nendpoint = "http://127.0.0.1:9"\n'
                                       f'bucket = "shop-calls"\naccess_key_id = "k"\nsecret_key_file = "{secret}"\n')
    config = load_config(path)
    assert doctor.check_offload(config).status == doctor.OK             # nothing recorded yet
    catalogue = Catalogue(tmp_path / "data")
    recent = record_call(catalogue, tmp_path / "data", started_at=iso_utc(time.time() - 120))
    result = doctor.check_offload(config)
    assert result.status == doctor.OK and "1 recording(s) waiting, the oldest for 2 min" in result.message
    late = record_call(catalogue, tmp_path / "data", started_at=iso_utc(time.time() - 7200))
    result = doctor.check_offload(config)
    assert result.status == doctor.FAIL and "2 recording(s) waiting, the oldest for 120 min" in result.message
    assert "http://127.0.0.1:9 bucket shop-calls" in result.message and "key or credentials" in result.fix
    worked_off = doctor.check_offload(config, target_works=True)       # it took the doctor's test file
    assert worked_off.status == doctor.FAIL and worked_off.fix.startswith("the target works now")
    assert "at most offload.retry_max_s (900 s) after its last failure" in worked_off.fix
    for call in (recent, late):
        catalogue.update_call(call["id"], offloaded_at=iso_utc(time.time()), offload_target="s3")
    assert "every recording is copied" in doctor.check_offload(config).message
    catalogue.close()
    assert doctor.check_offload(load_config(write_config(tmp_path))) is None    # no [offload]: no check


def test_the_doctor_warns_of_what_the_authorities_advise_against(tmp_path):
    path = config_file(tmp_path, store="\n[purpose.training]\nretention_days = 365\n")
    warnings = [r for r in doctor.check_advice(load_config(path)) if r.status == doctor.WARN]
    assert [r.message for r in warnings] == [
        "Purpose training: calls are kept 365 days, longer than the 183 days advised for it.",
        "Line t1 records every call for training at all hours: recording for this purpose should be occasional "
        "(set a schedule or record one call in several)."]
    calm = config_file(tmp_path, record_one_in=5)
    assert [r.status for r in doctor.check_advice(load_config(calm))] == [doctor.OK]
