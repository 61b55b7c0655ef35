"""The signer: the device key read by one process only, which signs over a UNIX socket. In a plain
store it signs from the start; in a sealed store the key is on the card only sealed, and signing
waits until a login forwards the store secret. The web UI, run here as a user of its own that may
not read the key file, still makes export bundles that verify offline."""

import base64
import errno
import hashlib
import json
import os
import pwd
import shutil
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance import signer
from appliance.keys import KEY_FILE, SEALED_KEY_FILE, ensure_device_key, ensure_device_key_apart, fingerprint
from appliance.offload import Offloader, verify_manifest
from appliance.signer import DeviceSigner, SignerError, SigningWaits
from appliance.store.auditchain import KEY_LABEL as AUDIT_LABEL
from appliance.store.catalogue import CATALOGUE_NAME, Catalogue
from appliance.store.ledger import Ledger, ledger_path
from appliance.store.evidence import verify_bundle, verify_store
from appliance.store.keyslots import KeySlots
from appliance.store.subjects import KEY_LABEL as SUBJECTS_LABEL, subject_hash, subject_key
from conftest import callrec, record_call, wait_for, write_config
from test_offload import FAST, Nas, offload_table

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def running(tmp_path):
    """A plain store with a call, and its signer: yields (data_dir, socket folder, service)."""
    data = tmp_path / "data"
    catalogue = Catalogue(data)
    record_call(catalogue, data)
    catalogue.close()
    service = signer.start(data, data / "run")
    yield data, data / "run", service
    service.stop(timeout=2)


def raw(folder: Path, line: bytes) -> dict:
    """Send `line` as it is to the signer's socket; its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(str(folder / signer.SOCKET_NAME))
        conn.sendall(line)
        conn.shutdown(socket.SHUT_WR)
        return json.loads(b"".join(iter(lambda: conn.recv(4096), b"")))


def verifies(public_hex: str, signature: bytes, data: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex)).verify(signature, data)
        return True
    except Exception:
        return False


def test_the_signer_signs_over_its_socket_and_bad_requests_change_nothing(running, caplog):
    data, folder, service = running
    assert (folder / signer.SOCKET_NAME).stat().st_mode & 0o777 == 0o660
    client = DeviceSigner(folder, data)
    caplog.set_level("INFO", logger="appliance.signer")
    signature, public = client.sign(b"a manifest")
    assert verifies(public, signature, b"a manifest") and not verifies(public, signature, b"another")
    assert (f"signed 10 bytes (SHA-256 {hashlib.sha256(b'a manifest').hexdigest()}) for uid {os.getuid()}"
            in caplog.messages)
    before = client.status()
    assert before == {"ok": True, "sealed": False, "locked": False, "public": public}
    for line, error in [(b"not json\n", "the request is not one line of JSON"),
                        (b"[1]\n", "the request must be a JSON object"),
                        (b'{"command": "forge"}\n', "command: one of sign, public, unlock, status, ledger"),
                        (b'{"command": "sign", "data": "***"}\n', "data: base64 bytes"),
                        (b'{"command": "sign"}\n', "data: base64 bytes"),
                        (b'{"command": "unlock", "secret": 5}\n', "secret: base64 bytes")]:
        assert raw(folder, line) == {"ok": False, "error": error}
    assert client.status() == before
    assert client.fingerprint() == fingerprint(public)


def test_without_a_signer_a_plain_store_signs_from_the_key_file_and_a_sealed_one_says_so(tmp_path):
    data = tmp_path / "data"
    signature, public = DeviceSigner(tmp_path / "run", data).sign(b"x")     # no socket there
    assert verifies(public, signature, b"x")
    KeySlots(data).create()
    with pytest.raises(SignerError, match="the signer is not running"):
        DeviceSigner(tmp_path / "run", data).sign(b"x")


def test_existing_audit_and_subject_hashes_keep_their_keys_in_files_of_their_own(tmp_path):
    data = tmp_path / "data"
    pem = ensure_device_key(data).read_bytes()
    catalogue = Catalogue(data)
    call = record_call(catalogue, data)
    catalogue.add_audit("admin", "listen", call["id"], "from the calls page")
    catalogue.close()
    # The values the device key gave them before they had files: the chain made then still verifies.
    assert (data / "keys/audit.key").read_bytes() == hashlib.sha256(AUDIT_LABEL + b"\0" + pem).digest()
    assert subject_key(data) == hashlib.sha256(SUBJECTS_LABEL + b"\0" + pem).digest()
    assert (data / "keys/audit.key").stat().st_mode & 0o777 == 0o640
    assert verify_store(Catalogue(data), data) == []


def test_a_sealed_store_has_no_device_key_in_the_clear_and_signing_waits_for_a_login(tmp_path):
    from web.backend import Backend

    config = write_config(tmp_path, recorder={"data_dir": "data"})
    data = tmp_path / "data"
    pem = ensure_device_key(data).read_bytes()
    old_public = DeviceSigner(None, data).public_hex()
    catalogue = Catalogue(data)
    call = record_call(catalogue, data)
    catalogue.add_audit("admin", "listen", call["id"], "before the store was sealed")
    catalogue.close()
    number_hash = subject_hash(subject_key(data), "+3225551234")
    secret = KeySlots(data).create()
    service = signer.start(data, data / "run")
    try:
        assert not (data / KEY_FILE).exists()
        assert (data / SEALED_KEY_FILE).stat().st_mode & 0o777 == 0o600
        body = b"".join(pem.splitlines()[1:-1])
        for path in data.rglob("*"):
            assert not path.is_file() or body not in path.read_bytes(), path
        assert verify_store(Catalogue(data), data) == []    # the audit key was kept from the clear key
        assert subject_hash(subject_key(data), "+3225551234") == number_hash

        client = DeviceSigner(data / "run", data)
        assert client.status() == {"ok": True, "sealed": True, "locked": True, "public": old_public}
        with pytest.raises(SigningWaits, match="signing waits for a login"):
            client.sign(b"x")
        with pytest.raises(SignerError, match="does not open the device key"):
            client.unlock(bytes(32))
        assert client.status()["locked"] is True

        backend = Backend(config)
        try:
            backend.unlock(secret)          # as a login does
        finally:
            backend.close()
        signature, public = client.sign(b"x")
        assert public == old_public and verifies(public, signature, b"x")
    finally:
        service.stop(timeout=2)


def test_a_store_sealed_while_the_signer_runs_gets_its_device_key_sealed_at_once(running):
    data, folder, _ = running
    client = DeviceSigner(folder, data)
    public = client.public_hex()
    secret = KeySlots(data).create()            # as `callrec seal` does
    with pytest.raises(SigningWaits):
        client.sign(b"x")
    assert not (data / KEY_FILE).exists() and (data / SEALED_KEY_FILE).exists()
    client.unlock(secret)
    signature, again = client.sign(b"x")
    assert again == public and verifies(public, signature, b"x")


def test_a_restarted_signer_is_given_the_secret_again_by_the_web_ui(tmp_path):
    from web.backend import Backend

    config = write_config(tmp_path, recorder={"data_dir": "data"})
    data = tmp_path / "data"
    secret = KeySlots(data).create()
    backend = Backend(config)
    service = signer.start(data, data / "run")
    try:
        backend.unlock(secret)
        service.stop(timeout=2)
        service = signer.start(data, data / "run")      # locked again, the web UI unlocked still
        signature, public = backend.signer.sign(b"x")
        assert verifies(public, signature, b"x")
    finally:
        service.stop(timeout=2)
        backend.close()


def test_an_export_from_the_web_ui_waits_for_a_login_then_signs_through_the_signer(tmp_path):
    from web import create_app

    config = write_config(tmp_path, recorder={"data_dir": "data"})
    data = tmp_path / "data"
    catalogue = Catalogue(data)
    call = record_call(catalogue, data)
    catalogue.close()
    secret = KeySlots(data).create()
    service = signer.start(data, data / "run")
    app = create_app(config, secure_cookies=False)
    try:
        token = app.extensions["callrec"].accounts.add_token("dpo", "admin", None, "test")
        client = app.test_client()
        auth = {"Authorization": f"Bearer {token}"}
        refused = client.post("/api/v1/exports", json={"call_ids": [call["id"]]}, headers=auth)
        assert refused.status_code == 423 and service.key.locked
        assert not list((data / "web" / "exports").glob("*.zip*"))
        assert "exported" not in [e["event"] for e in Catalogue(data).ledger.entries()]
        app.extensions["callrec"].unlock(secret)                 # a login: the signer gets the secret
        assert not service.key.locked
        started = client.post("/api/v1/exports", json={"call_ids": [call["id"]]}, headers=auth)
        assert started.status_code == 202
        status_url = started.get_json()["status_url"]
        assert wait_for(lambda: client.get(status_url, headers=auth).get_json()["state"] != "running", 10)
        assert client.get(status_url, headers=auth).get_json()["state"] == "ready"
        [bundle] = (data / "web" / "exports").glob("*.zip")
        problems, manifest = verify_bundle(bundle)
        assert problems == [] and manifest["device_public_key"] == service.key.public
    finally:
        app.extensions["callrec"].close()
        service.stop(timeout=2)


def test_offload_of_a_sealed_store_waits_for_a_login_and_loses_no_copy(tmp_path):
    nas = Nas(tmp_path / "ssh")
    nas.start()
    config = write_config(tmp_path, recorder={"data_dir": "data"})
    config.write_text(config.read_text() + offload_table({**FAST, **nas.settings()}))
    data = tmp_path / "data"
    catalogue = Catalogue(data)
    call = record_call(catalogue, data)
    secret = KeySlots(data).create()
    service = signer.start(data, data / "run")
    from appliance.config import load_config

    offloader = Offloader(load_config(config).offload, catalogue, data, data / "run")
    offloader.start()
    try:
        assert wait_for(lambda: offloader.failures >= 2, 10)        # retried while locked
        assert offloader.offloaded == 0 and catalogue.get_call(call["id"])["offloaded_at"] is None
        DeviceSigner(data / "run", data).unlock(secret)
        assert wait_for(lambda: offloader.offloaded == 1, 15)
    finally:
        offloader.stop(5)
        service.stop(timeout=2)
        nas.stop()
    copy = nas.folder / Path(*Path(call["file"]).parts[1:])
    manifest = json.loads(copy.with_name(copy.name + ".json").read_text())
    assert verify_manifest(manifest, copy.read_bytes()) == []
    assert catalogue.get_call(call["id"])["offloaded_at"] is not None
    catalogue.close()


# -- the web UI as a user of its own ------------------------------------------------------------

def web_python() -> list[str] | None:
    """A Python the web user can run with this project's packages: this one if it can reach it,
    else the system's of the same version with this environment's site-packages on its path."""
    for candidate in (sys.executable, f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"):
        if all(os.stat(parent).st_mode & 0o001 for parent in Path(candidate).resolve().parents):
            return [candidate]
    return None


@pytest.fixture
def web_user():
    """A system user made for the test (removed after it): its name."""
    if os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("setpriv") is None:
        pytest.skip("needs root, useradd and setpriv")
    name = f"crweb{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    yield name
    subprocess.run(["userdel", name], check=False)


def test_the_web_ui_as_its_own_user_cannot_read_the_key_nor_write_the_ledger_and_its_bundles_verify_offline(web_user):
    """Laid out as install.sh lays it out: the recorder's user (root here) owns the data folder, the
    keys and the ledger; the web UI's user is in its group. The web UI cannot read the device key nor
    write the ledger, yet its export is signed and put on the ledger, by the signer."""
    import site

    python = web_python()
    if python is None:
        pytest.skip("no Python the web user can run")
    user = pwd.getpwnam(web_user)
    home = Path(tempfile.mkdtemp(prefix="callrec-signer-"))     # /tmp itself: pytest's folders are root's only
    try:
        os.chmod(home, 0o755)
        config = write_config(home, recorder={"data_dir": "data"})
        https_port, http_port = _free_ports()
        config.write_text(config.read_text().replace(
            "\n[[line]]", f'\n[web]\nhttps_port = {https_port}\nhttp_port = {http_port}\nhostname = "localhost"\n\n[[line]]', 1))
        data = home / "data"
        catalogue = Catalogue(data)
        call = record_call(catalogue, data)
        catalogue.close()
        ensure_device_key_apart(data)       # as the recorder does at its start
        from web.accounts import Accounts

        accounts = Accounts(data / "web")
        token = accounts.add_token("dpo", "admin", None, "test")
        accounts.close()
        # The recorder's group, which the web user is in on the appliance, is here the web user's own:
        # it reads and writes the data but keys/ and ledger/ (which it reads); web/ is the web user's.
        for path in [data, *data.rglob("*")]:
            top = path.relative_to(data).parts[:1]
            if top == ("web",):
                os.chown(path, user.pw_uid, user.pw_gid)
            elif top not in (("keys",), ("ledger",)):
                os.chown(path, -1, user.pw_gid)
                os.chmod(path, path.stat().st_mode | (0o070 if path.is_dir() else 0o060))
        service = signer.start(data, data / "run")
        for shared in ("keys", "keys/audit.key", "keys/subjects.key", "ledger", "ledger/ledger.db",
                       f"run/{signer.SOCKET_NAME}"):
            os.chown(data / shared, -1, user.pw_gid)
        as_web = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home),
               "PYTHONPATH": os.pathsep.join([str(ROOT), *site.getsitepackages()])}

        for attempt in (f"open({str(data / KEY_FILE)!r}, 'rb')", f"open({str(ledger_path(data))!r}, 'r+b')",
                        f"open({str(data / 'ledger' / 'forged.db')!r}, 'wb')"):
            refused = subprocess.run([*as_web, *python, "-c", attempt], env=env, capture_output=True, text=True)
            assert "PermissionError" in refused.stderr and f"[Errno {errno.EACCES}]" in refused.stderr, attempt

        web = subprocess.Popen([*as_web, *python, "-m", "appliance", "web", "--config", str(config)], env=env,
                               cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            base = f"https://127.0.0.1:{https_port}"
            context = ssl._create_unverified_context()
            assert wait_for(lambda: _answers(f"{base}/healthz", context), 30), \
                web.stdout.read() if web.poll() is not None else "no answer"
            status = os.stat(f"/proc/{web.pid}")
            assert status.st_uid == user.pw_uid

            def api(path, body=None):
                request = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode() if body else None,
                                                 headers={"Authorization": f"Bearer {token}",
                                                          "Content-Type": "application/json"})
                with urllib.request.urlopen(request, context=context, timeout=10) as answer:
                    return answer.read()
            job = json.loads(api("/api/v1/exports", {"call_ids": [call["id"]]}))
            assert wait_for(lambda: json.loads(api(job["status_url"]))["state"] != "running", 20)
            done = json.loads(api(job["status_url"]))
            assert done["state"] == "ready", done
            bundle = home / "bundle.zip"
            bundle.write_bytes(api(done["bundle_url"]))
        finally:
            web.terminate()
            web.wait(timeout=10)
            service.stop(timeout=2)
        expected = DeviceSigner(None, data).fingerprint()
        problems, manifest = verify_bundle(bundle, expected)
        assert problems == [] and manifest["calls"][0]["id"] == call["id"]
        assert [e["event"] for e in manifest["calls"][0]["ledger"]] == ["recorded"]    # read through the group
        # Read as they are (a catalogue opened here, by the ledger's owner, would write what waits).
        assert [e["event"] for e in Ledger(data).entries_of(call["id"])[0]] == ["recorded", "exported"]
        with closing(sqlite3.connect(f"{(data / CATALOGUE_NAME).as_uri()}?mode=ro", uri=True)) as db:
            assert db.execute("SELECT COUNT(*) FROM ledger_queue").fetchone()[0] == 0
        assert ledger_path(data).stat().st_uid == os.geteuid()
        result = callrec("verify", str(bundle), "--key", expected)
        assert result.stdout.rstrip().endswith("OK")
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _free_ports() -> tuple[int, int]:
    from conftest import free_port

    return free_port(), free_port()


def _answers(url: str, context) -> bool:
    try:
        urllib.request.urlopen(url, context=context, timeout=1)
        return True
    except OSError:
        return False


def test_the_signer_runs_as_its_own_command_and_stops_on_sigterm(tmp_path):
    config = write_config(tmp_path, recorder={"data_dir": "data"})
    data = tmp_path / "data"
    process = subprocess.Popen([sys.executable, "-m", "appliance", "signer", "--config", str(config)],
                               stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: (data / "run" / signer.SOCKET_NAME).exists(), 20)
        signature, public = DeviceSigner(data / "run", data).sign(b"x")
        assert verifies(public, signature, b"x")
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
    assert not (data / "run" / signer.SOCKET_NAME).exists()
    assert "signing with device key" in process.stderr.read()


def test_a_large_manifest_is_signed_whole(running):
    data, folder, _ = running
    payload = bytes(range(256)) * 1000
    answer = raw(folder, json.dumps({"command": "sign", "data": base64.b64encode(payload).decode()}).encode() + b"\n")
    assert answer["ok"] and verifies(answer["public"], bytes.fromhex(answer["signature"]), payload)


# -- the doctor ----------------------------------------------------------------------------------

def test_the_doctor_fails_on_a_secret_file_more_can_read_than_should_and_says_the_chmod(tmp_path):
    from appliance import doctor
    from appliance.config import load_config

    secret = tmp_path / "webhook-secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    config_path = write_config(tmp_path, recorder={"data_dir": "data"})
    config_path.write_text(config_path.read_text() +
                           f'\n[webhook]\nurl = "https://crm.example/hook"\nsecret_file = "{secret}"\n')
    config = load_config(config_path)
    data = tmp_path / "data"
    Catalogue(data).add_audit("admin", "listen")        # makes the device key and the audit key
    assert [r.status for r in doctor.check_secret_files(config)] == [doctor.OK]

    key, audit = data / KEY_FILE, data / "keys/audit.key"
    for path, mode in ((key, 0o640), (audit, 0o644), (secret, 0o640)):
        path.chmod(mode)
    failures = {r.message: r.fix for r in doctor.check_secret_files(config)}
    assert failures == {
        f"the device key {key} has mode 0640: more can read it than should": f"chmod 600 {key}",
        f"the audit key {audit} has mode 0644: more can read it than should": f"chmod 640 {audit}",
        f"webhook.secret_file {secret} has mode 0640: more can read it than should": f"chmod 600 {secret}"}
    report = callrec("doctor", "--config", str(config_path), "--seconds", "0.5", "--json", check=False)
    assert report.returncode == 1
    assert {c["message"] for c in json.loads(report.stdout)["checks"] if c["status"] == "fail"} >= set(failures)


def test_the_doctor_says_whether_the_signer_answers_and_whether_it_waits_for_a_login(tmp_path):
    from appliance import doctor
    from appliance.config import load_config

    config = load_config(write_config(tmp_path, recorder={"data_dir": "data"}))
    data = tmp_path / "data"
    assert doctor.check_signer(config, systemd=False).status == doctor.INFO
    missing = doctor.check_signer(config, systemd=True)
    assert missing.status == doctor.FAIL and "systemctl enable --now callrec-signer.service" in missing.fix
    service = signer.start(data, config.recorder.live_dir)
    try:
        open_ = doctor.check_signer(config, systemd=True)
        assert open_.status == doctor.OK and DeviceSigner(None, data).fingerprint() in open_.message
    finally:
        service.stop(timeout=2)
    KeySlots(data).create()
    service = signer.start(data, config.recorder.live_dir)
    try:
        waiting = doctor.check_signer(config, systemd=False)
        assert waiting.status == doctor.WARN and "waits for a login" in waiting.message
    finally:
        service.stop(timeout=2)


def test_the_doctor_fails_on_a_recorders_secret_that_another_user_owns(tmp_path, web_user):
    from appliance import doctor
    from appliance.config import load_config

    secret = tmp_path / "s3-secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    config_path = write_config(tmp_path, recorder={"data_dir": "data"})
    config_path.write_text(config_path.read_text() +
                           f'\n[webhook]\nurl = "https://crm.example/hook"\nsecret_file = "{secret}"\n')
    (tmp_path / "data").mkdir()
    config = load_config(config_path)
    assert [r.status for r in doctor.check_secret_files(config)] == [doctor.OK]
    os.chown(secret, pwd.getpwnam(web_user).pw_uid, -1)      # e.g. written by the web UI
    [result] = doctor.check_secret_files(config)
    assert result.status == doctor.FAIL and f"belongs to {web_user}, not to the recorder's user root" in result.message
    assert result.fix == f"chown root {secret}"
