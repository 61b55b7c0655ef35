"""Offload against real targets on loopback: an OpenSSH server started by the test (its own host
key, an authorised key made here) that rsync copies into a folder, and moto's S3 server with
signature checking on. Down targets: a server not started yet, and one frozen mid-run."""

import getpass
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.store.archive import finalise
from appliance.store.catalogue import Catalogue
from appliance.clock import iso_utc
from appliance.config import ConfigError, load_config
from appliance.offload import Offloader, verify_manifest
from appliance.store.spool import SpoolWriter
from conftest import RATE, callrec, free_port, simulated_cards, stop, tone, wait_for, write_config

FAST = {"timeout_s": 1, "retry_first_s": 0.2, "retry_max_s": 0.5}


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    def accepting():
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    assert wait_for(accepting, timeout), f"nothing listens on port {port}"


def offload_table(settings: dict) -> str:
    return "\n[offload]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())


def appliance(folder: Path, offload: dict, recorder: dict | None = None):
    """The configuration of line t1 with the given [offload] table, its data in `folder`/data."""
    path = write_config(folder, recorder={"data_dir": "data", **(recorder or {})})
    path.write_text(path.read_text() + offload_table({**FAST, **offload}))
    return load_config(path)


def record_calls(data: Path, count: int) -> list[dict]:
    """Finish `count` calls of a second each through the real spool and finaliser."""
    catalogue = Catalogue(data)
    (data / "spool").mkdir(parents=True, exist_ok=True)
    rows = []
    for n in range(count):
        spool = data / "spool" / f"t1-{time.time_ns()}.wav"
        writer = SpoolWriter(spool, RATE, flush_interval=0.1)
        writer.append((tone(300 + 100 * n, 1.0, 0.3) * 32767).astype("<i2").tobytes())
        writer.close()
        call_id = catalogue.add_call(line="t1", direction="incoming", started_at=iso_utc(time.time()),
                                     purpose="training", state="recording", spool=f"spool/{spool.name}",
                                     sample_rate=RATE)
        rows.append(finalise(catalogue, data, call_id, "complete", "opus", 16000))
    catalogue.close()
    return rows


def offloaded(data: Path) -> list[dict]:
    return [call for call in json.loads(callrec("calls", "--json", "--data", str(data)).stdout)
            if call["offloaded_at"]]


def check_copy(call: dict, recording: bytes, manifest: bytes) -> None:
    """The copy is the recording, and its manifest is signed by the device and describes it."""
    assert hashlib.sha256(recording).hexdigest() == call["sha256"]
    document = json.loads(manifest)
    assert verify_manifest(document, recording) == []
    assert document["call"]["id"] == call["id"] and document["recording"] == Path(call["file"]).name
    assert [e["event"] for e in document["ledger"]] == ["recorded"]
    tampered = {**document, "call": {**document["call"], "number": "+3225550000"}}
    assert verify_manifest(tampered, recording) != []


# -- rsync over SSH --------------------------------------------------------------------------------

class Nas:
    """An OpenSSH server on 127.0.0.1 with its own host key, letting in one key made here; the
    recordings go to `folder`."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.folder = root / "nas" / "callrec"
        root.mkdir()
        for name in ("host_key", "client_key", "other_host_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
        (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
        (root / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {(root / 'host_key.pub').read_text()}")
        (root / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile none\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n")
        self.process = None

    def settings(self, **changes) -> dict:
        return {"type": "rsync", "destination": f"{getpass.getuser()}@127.0.0.1:{self.folder}",
                "ssh_port": self.port, "ssh_key_file": str(self.root / "client_key"),
                "known_hosts_file": str(self.root / "known_hosts"), **changes}

    def start(self) -> None:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)    # sshd's privilege separation folder
        self.process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(self.root / "sshd_config")],
                                        stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()


@pytest.fixture
def nas(tmp_path):
    server = Nas(tmp_path / "ssh")
    yield server
    server.stop()


def test_recordings_waiting_at_start_are_copied_by_rsync_with_signed_manifests_and_marked(tmp_path, nas):
    nas.start()
    config = appliance(tmp_path, nas.settings())
    data = config.recorder.data_dir
    calls = record_calls(data, 2)
    catalogue = Catalogue(data)
    offloader = Offloader(config.offload, catalogue, data)
    offloader.start()                  # catches up with what is waiting, with no notify()
    try:
        assert wait_for(lambda: offloader.offloaded == 2, 15)
    finally:
        offloader.stop(5)
        catalogue.close()
    marked = offloaded(data)
    assert [c["id"] for c in marked] == [c["id"] for c in calls]
    for call in marked:
        assert call["offload_target"] == f"rsync:{getpass.getuser()}@127.0.0.1:{nas.folder}"
        copy = nas.folder / Path(call["file"]).relative_to("archive")
        check_copy(call, copy.read_bytes(), Path(f"{copy}.json").read_bytes())
    verified = callrec("verify", "--data", str(data))     # the ledger chain holds the new entries
    assert verified.stdout.strip().endswith("2 recording(s) and the ledger: OK")
    events = [e["event"] for e in Catalogue(data).ledger.entries()]
    assert events == ["recorded", "recorded", "offloaded", "offloaded"]
    assert not list((data / "offload").iterdir())          # no manifest left behind


def test_an_erased_or_expired_call_loses_its_copy_on_the_nas_but_an_evicted_one_keeps_it(tmp_path, nas):
    from appliance.config import StoreConfig
    from appliance.store.retention import Store

    nas.start()
    config = appliance(tmp_path, nas.settings())
    data = config.recorder.data_dir
    erased, expired, evicted = record_calls(data, 3)
    copies = {call["id"]: nas.folder / Path(call["file"]).relative_to("archive") for call in (erased, expired, evicted)}
    run_offloader(config, lambda _: len(offloaded(data)) == 3)
    catalogue = Catalogue(data)
    store = Store(catalogue, data, config.purpose, StoreConfig(min_free_mb=0, min_free_hours=0))
    store.erase(erased["id"], "user:owner")                                   # a customer's request
    catalogue.update_call(expired["id"], started_at="2020-01-01T00:00:00.000Z")   # long past its retention
    store.clean()
    Store(catalogue, data, config.purpose, StoreConfig(min_free_mb=10 ** 9)).clean()   # the disk is "full"
    assert catalogue.calls() == []
    catalogue.close()
    run_offloader(config, lambda _: not copies[erased["id"]].exists() and not copies[expired["id"]].exists())
    assert not Path(f"{copies[erased['id']]}.json").exists() and not Path(f"{copies[expired['id']]}.json").exists()
    assert copies[evicted["id"]].exists()           # kept off the box: that is what offload is for
    with Catalogue(data).transaction() as db:
        assert db.execute("SELECT COUNT(*) FROM offload_deletions").fetchone()[0] == 0
    deleted = [(e["call_id"], e["detail"]) for e in Catalogue(data).ledger.entries() if e["event"] == "offload-deleted"]
    assert sorted(deleted) == [(erased["id"], f"erased at rsync:{getpass.getuser()}@127.0.0.1:{nas.folder}"),
                               (expired["id"], f"expired at rsync:{getpass.getuser()}@127.0.0.1:{nas.folder}")]
    assert callrec("verify", "--data", str(data)).returncode == 0


def test_notes_and_a_purpose_changed_after_the_offload_reach_the_copy(tmp_path, nas):
    from appliance.config import StoreConfig
    from appliance.store.retention import Store

    nas.start()
    config = appliance(tmp_path, nas.settings())
    data = config.recorder.data_dir
    noted, classified, untouched = record_calls(data, 3)
    run_offloader(config, lambda _: len(offloaded(data)) == 3)
    catalogue = Catalogue(data)
    catalogue.set_notes(noted["id"], "order 1182 confirmed", "user:owner")
    Store(catalogue, data, config.purpose, StoreConfig()).classify(classified["id"], "agreement", "user:owner")
    assert {c["id"] for c in offloaded(data)} == {untouched["id"]}
    catalogue.close()
    sent_again = run_offloader(config, lambda _: len(offloaded(data)) == 3)
    assert sent_again.offloaded == 2
    manifests = {call["id"]: json.loads(Path(f"{nas.folder / Path(call['file']).relative_to('archive')}.json").read_text())
                 for call in (noted, classified)}
    assert manifests[noted["id"]]["call"]["notes"] == "order 1182 confirmed"
    assert manifests[classified["id"]]["call"]["purpose"] == "agreement"
    assert [e["event"] for e in manifests[classified["id"]]["ledger"]] == ["recorded", "offloaded", "reclassified"]
    assert verify_manifest(manifests[noted["id"]]) == []


def test_a_server_whose_host_key_is_not_the_known_one_gets_nothing(tmp_path, nas, caplog):
    nas.start()
    (nas.root / "known_hosts").write_text(
        f"[127.0.0.1]:{nas.port} {(nas.root / 'other_host_key.pub').read_text()}")
    config = appliance(tmp_path, nas.settings())
    record_calls(config.recorder.data_dir, 1)
    catalogue = Catalogue(config.recorder.data_dir)
    offloader = Offloader(config.offload, catalogue, config.recorder.data_dir)
    offloader.start()
    try:
        assert wait_for(lambda: offloader.failures >= 2, 10)
    finally:
        offloader.stop(5)
        catalogue.close()
    assert offloaded(config.recorder.data_dir) == [] and not nas.folder.exists()
    assert "Host key verification failed" in caplog.text


@pytest.fixture
def live_line(tmp_path, monkeypatch):
    """The recorder in this process on line t1: its audio from a FIFO-fed capture PCM, its pins
    on a MockFactory the test drives. Yields a function that builds it from an [offload] table."""
    from gpiozero.pins.mock import MockFactory

    from appliance.recorder import Recorder
    from appliance.simulate import simulated

    data = tmp_path / "data"
    alsa, feeders = simulated_cards(data, ["t1"], (tone(440, 30, 0.2) * 32767).astype("<i2").tobytes())
    monkeypatch.setenv("ALSA_CONFIG_PATH", alsa)
    factory = MockFactory()
    recorders = []

    def build(offload: dict):
        config = appliance(tmp_path, offload, recorder={"flash_max_ms": 100, "debounce_ms": 10})
        recorders.append(Recorder(simulated(config, data), pin_factory=factory))
        return recorders[-1], factory

    yield build
    for recorder in recorders:
        recorder.stop()
    stop(feeders)
    factory.reset()


def test_recording_goes_on_while_the_nas_is_down_and_the_backlog_drains_when_it_is_back(live_line, nas, caplog):
    recorder, factory = live_line(nas.settings())
    recorder.start()
    hook = factory.pin(17)
    for _ in range(2):                      # two calls while the NAS is down
        hook.drive_low()
        time.sleep(0.6)
        hook.drive_high()
        time.sleep(0.4)
    assert wait_for(recorder.idle, 10)
    calls = recorder.catalogue.calls()
    assert [c["state"] for c in calls] == ["complete", "complete"] and all(c["file"] for c in calls)
    assert wait_for(lambda: recorder.offload.failures >= 2, 10)        # retried, with back-off
    assert all(c["offloaded_at"] is None for c in recorder.catalogue.calls())
    assert "Connection refused" in caplog.text and "recording goes on" in caplog.text
    nas.start()
    assert wait_for(lambda: all(c["offloaded_at"] for c in recorder.catalogue.calls()), 15)
    for call in recorder.catalogue.calls():
        copy = nas.folder / Path(call["file"]).relative_to("archive")
        check_copy(call, copy.read_bytes(), Path(f"{copy}.json").read_bytes())


# -- S3 ---------------------------------------------------------------------------------------------

class ObjectStore:
    """moto's S3 server on 127.0.0.1 with request signatures and rights checked: after the first
    actions (which make two users, their keys and policies, and the bucket) every request must be
    signed. The user `callrec` may do anything in S3; `putter` may only put objects."""

    def __init__(self, root: Path):
        import boto3

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "7"}
        self.process = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                                         "-p", str(self.port)], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)
        anyone = {"endpoint_url": self.endpoint, "region_name": "eu-west-1",
                  "aws_access_key_id": "x", "aws_secret_access_key": "x"}
        iam = boto3.client("iam", **anyone)
        keys = {}
        for user, action in (("callrec", "s3:*"), ("putter", "s3:PutObject")):
            iam.create_user(UserName=user)
            keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
            iam.put_user_policy(UserName=user, PolicyName="offload", PolicyDocument=json.dumps({
                "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": action, "Resource": "*"}]}))
        key = keys["callrec"]
        self.key_id, self.secret = key["AccessKeyId"], key["SecretAccessKey"]
        self.putter_id = keys["putter"]["AccessKeyId"]
        (root / "putter-secret").write_text(keys["putter"]["SecretAccessKey"])
        self.putter_secret_file = root / "putter-secret"
        self.client = boto3.client("s3", **{**anyone, "aws_access_key_id": self.key_id,
                                            "aws_secret_access_key": self.secret})
        self.client.create_bucket(Bucket="shop-calls", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        (root / "s3-secret").write_text(self.secret + "\n")
        self.secret_file = root / "s3-secret"

    def settings(self, **changes) -> dict:
        return {"type": "s3", "endpoint": self.endpoint, "bucket": "shop-calls", "region": "eu-west-1",
                "prefix": "shop-1/", "access_key_id": self.key_id, "secret_key_file": str(self.secret_file),
                **changes}

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket="shop-calls", Key=key)["Body"].read()

    def close(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        self.process.wait()


@pytest.fixture(scope="module")
def object_store(tmp_path_factory):
    store = ObjectStore(tmp_path_factory.mktemp("s3"))
    yield store
    store.close()


def run_offloader(config, until, timeout: float = 15.0) -> Offloader:
    catalogue = Catalogue(config.recorder.data_dir)
    offloader = Offloader(config.offload, catalogue, config.recorder.data_dir)
    offloader.start()
    try:
        assert wait_for(lambda: until(offloader), timeout)
    finally:
        offloader.stop(5)
        catalogue.close()
    return offloader


def test_recordings_go_to_an_s3_bucket_signed_and_checked_by_the_server(tmp_path, object_store):
    config = appliance(tmp_path, object_store.settings())
    data = config.recorder.data_dir
    record_calls(data, 2)
    run_offloader(config, lambda o: o.offloaded == 2)
    for call in offloaded(data):
        key = "shop-1/" + str(Path(call["file"]).relative_to("archive"))
        check_copy(call, object_store.get(key), object_store.get(key + ".json"))
        assert call["offload_target"] == f"s3:{object_store.endpoint}/shop-calls/shop-1/"


def test_an_erased_call_loses_its_copy_in_the_bucket(tmp_path, object_store):
    from appliance.config import StoreConfig
    from appliance.store.retention import Store

    config = appliance(tmp_path, object_store.settings(prefix="erasure/"))
    data = config.recorder.data_dir
    [call] = record_calls(data, 1)
    key = "erasure/" + str(Path(call["file"]).relative_to("archive"))
    run_offloader(config, lambda _: len(offloaded(data)) == 1)
    assert object_store.get(key)
    catalogue = Catalogue(data)
    Store(catalogue, data, config.purpose, StoreConfig(min_free_mb=0, min_free_hours=0)).erase(call["id"], "user:owner")
    catalogue.close()

    def gone(name: str) -> bool:
        try:
            object_store.get(name)
        except object_store.client.exceptions.NoSuchKey:
            return True
        return False
    run_offloader(config, lambda _: gone(key) and gone(key + ".json"))


def test_a_wrong_s3_secret_is_refused_by_the_server_and_nothing_is_marked(tmp_path, object_store, caplog):
    (tmp_path / "wrong").write_text("not-the-secret")
    config = appliance(tmp_path, object_store.settings(secret_key_file=str(tmp_path / "wrong")))
    record_calls(config.recorder.data_dir, 1)
    run_offloader(config, lambda o: o.failures >= 2)
    assert offloaded(config.recorder.data_dir) == []
    assert "HTTP 403 SignatureDoesNotMatch" in caplog.text


def test_an_s3_server_that_stops_answering_is_retried_until_it_is_back(tmp_path, object_store, caplog):
    config = appliance(tmp_path, object_store.settings(prefix="frozen/"))
    data = config.recorder.data_dir
    record_calls(data, 2)
    catalogue = Catalogue(data)
    offloader = Offloader(config.offload, catalogue, data)
    object_store.process.send_signal(signal.SIGSTOP)        # it hangs: connections get no answer
    try:
        offloader.start()
        assert wait_for(lambda: offloader.failures >= 2, 10)
        assert offloader.offloaded == 0 and offloaded(data) == []
        assert "timed out" in caplog.text
    finally:
        object_store.process.send_signal(signal.SIGCONT)
    try:
        assert wait_for(lambda: offloader.offloaded == 2, 15)
    finally:
        offloader.stop(5)
        catalogue.close()
    assert len(offloaded(data)) == 2


# -- `callrec doctor`'s test of the target -----------------------------------------------------------

def test_the_doctor_copies_a_test_file_to_a_working_nas_and_deletes_it(tmp_path, nas):
    from appliance.doctor import check_offload_target

    nas.start()
    config = appliance(tmp_path, nas.settings())
    result = check_offload_target(config)
    assert result.status == "ok", result.line()
    assert result.message.startswith(f"offload to {getpass.getuser()}@127.0.0.1:{nas.folder}: a test file was "
                                     "copied there and deleted again")
    assert list(nas.folder.iterdir()) == []         # the folder is made, as for the first recording
    assert not (config.recorder.data_dir / "offload").exists()     # nothing staged in the data folder


def test_the_doctor_names_why_a_nas_does_not_take_the_test_file(tmp_path, nas):
    from appliance.doctor import check_offload_target

    down = check_offload_target(appliance(tmp_path, nas.settings()))
    assert down.status == "fail" and "Connection refused" in down.message
    assert down.fix.startswith(f"nothing answers on port {nas.port} of 127.0.0.1")
    nas.start()
    other_server = tmp_path / "other-server"
    other_server.write_text(f"[127.0.0.1]:{nas.port} {(nas.root / 'other_host_key.pub').read_text()}")
    impostor = check_offload_target(appliance(tmp_path, nas.settings(known_hosts_file=str(other_server))))
    assert impostor.status == "fail" and "Host key verification failed" in impostor.message
    assert "shows another host key than the one in" in impostor.fix and "ssh-keyscan" in impostor.fix
    not_let_in = nas.settings(ssh_key_file=str(nas.root / "other_host_key"))
    unknown_key = check_offload_target(appliance(tmp_path, not_let_in))
    assert unknown_key.status == "fail" and "Permission denied (publickey)" in unknown_key.message
    assert "other_host_key.pub to ~/.ssh/authorized_keys" in unknown_key.fix
    assert not nas.folder.exists()
    nas.process.send_signal(signal.SIGSTOP)          # it hangs: connections get no answer
    try:
        started = time.monotonic()
        frozen = check_offload_target(appliance(tmp_path, nas.settings()), timeout_s=1)
        took = time.monotonic() - started
    finally:
        nas.process.send_signal(signal.SIGCONT)
    assert frozen.status == "fail" and "timed out" in frozen.message and took < 5
    assert frozen.fix.startswith("127.0.0.1 does not answer")


def bucket_keys(object_store: ObjectStore, prefix: str) -> list[str]:
    listed = object_store.client.list_objects_v2(Bucket="shop-calls", Prefix=prefix)
    return [item["Key"] for item in listed.get("Contents", [])]


def test_the_doctor_copies_a_test_file_to_a_working_bucket_and_deletes_it(tmp_path, object_store):
    from appliance.doctor import check_offload_target

    result = check_offload_target(appliance(tmp_path, object_store.settings(prefix="probe/")))
    assert result.status == "ok", result.line()
    assert result.message.startswith(f"offload to {object_store.endpoint} bucket shop-calls: a test file was "
                                     "copied there and deleted again")
    assert bucket_keys(object_store, "probe/") == []


def test_the_doctor_names_why_a_bucket_does_not_take_the_test_file(tmp_path, object_store):
    from appliance.doctor import check_offload_target

    def probe(**changes):
        return check_offload_target(appliance(tmp_path, object_store.settings(**changes)))

    closed = free_port()
    down = probe(endpoint=f"http://127.0.0.1:{closed}")
    assert down.status == "fail" and "Connection refused" in down.message
    assert down.fix.startswith(f"nothing answers at http://127.0.0.1:{closed}")
    no_bucket = probe(bucket="shop-calls-typo")
    assert no_bucket.status == "fail" and "HTTP 404 NoSuchBucket" in no_bucket.message
    assert no_bucket.fix.startswith("there is no bucket shop-calls-typo")
    (tmp_path / "wrong").write_text("not-the-secret")
    wrong_secret = probe(secret_key_file=str(tmp_path / "wrong"))
    assert wrong_secret.status == "fail" and "HTTP 403 SignatureDoesNotMatch" in wrong_secret.message
    assert wrong_secret.fix.startswith(f"the secret key in {tmp_path / 'wrong'} is not the one of access key")
    put_only = probe(prefix="put-only/", access_key_id=object_store.putter_id,
                     secret_key_file=str(object_store.putter_secret_file))
    assert put_only.status == "fail" and "copied there but cannot be deleted" in put_only.message
    assert "HTTP 403 AccessDenied" in put_only.message and "give it s3:DeleteObject" in put_only.fix
    left = bucket_keys(object_store, "put-only/")        # said so, since the key may not delete it
    assert left == ["put-only/.callrec-doctor-probe", "put-only/.callrec-doctor-probe.json"]
    assert ".callrec-doctor-probe" in put_only.fix
    for key in left:
        object_store.client.delete_object(Bucket="shop-calls", Key=key)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can run as root and give a folder to another user")
def test_the_doctor_run_as_root_warns_that_the_recorder_reads_the_files_as_its_own_user(tmp_path, object_store):
    from appliance.doctor import check_offload_target

    config = appliance(tmp_path, object_store.settings(prefix="root/"))
    config.recorder.data_dir.mkdir(parents=True)
    os.chown(config.recorder.data_dir, 65534, 65534)
    result = check_offload_target(config)
    assert result.status == "warn" and "but as root" in result.message
    assert "sudo -u nobody callrec doctor" in result.fix


def test_the_doctors_report_has_the_test_of_the_target_before_the_recordings_waiting(tmp_path, object_store):
    config = appliance(tmp_path, object_store.settings(prefix="report/"))
    record_calls(config.recorder.data_dir, 1)
    report = callrec("doctor", "--config", str(tmp_path / "appliance.toml"), "--seconds", "0.5", "--json",
                     check=False, env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
    checks = [check for check in json.loads(report.stdout)["checks"] if check["message"].startswith("offload to")]
    assert all(set(check) == {"status", "message", "fix"} for check in checks)     # as every check
    target, waiting = checks
    assert target["status"] == "ok" and "a test file was copied there and deleted again" in target["message"]
    assert waiting["status"] == "ok" and "1 recording(s) waiting" in waiting["message"]


# -- configuration ------------------------------------------------------------------------------------

@pytest.mark.parametrize("table, message", [
    ({"type": "rsync", "destination": "nas:/srv"}, "offload: type = 'rsync' needs ssh_key_file, known_hosts_file"),
    ({"type": "s3", "endpoint": "https://s3.example.com", "bucket": "calls", "access_key_id": "AK",
      "secret_key_file": "s", "ssh_port": 2222}, "offload: ssh_port: only for type = 'rsync'"),
    ({"type": "ftp"}, "offload.type: Input should be 'rsync' or 's3'"),
    ({"type": "s3", "endpoint": "https://s3.example.com", "bucket": "calls", "access_key_id": "AK",
      "secret_key_file": "missing"}, "offload.secret_key_file: no such file"),
])
def test_an_offload_table_with_a_wrong_key_is_refused_naming_it(tmp_path, table, message):
    (tmp_path / "s").write_text("secret")
    path = write_config(tmp_path)
    path.write_text(path.read_text() + offload_table(table))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(path)


def test_the_s3_signature_is_the_one_in_the_aws_documentation():
    # "Example: GET Object" of the Signature Version 4 documentation for Amazon S3.
    from datetime import datetime, timezone

    from appliance.s3 import sign

    headers = sign("GET", "/test.txt", {"Host": "examplebucket.s3.amazonaws.com", "Range": "bytes=0-9"},
                   hashlib.sha256(b"").hexdigest(), "AKIAIOSFODNN7EXAMPLE",
                   "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "us-east-1", datetime(2013, 5, 24, tzinfo=timezone.utc))
    assert headers["authorization"].endswith(
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


def test_the_recorder_process_does_not_load_boto3_or_cryptography():
    loaded = subprocess.run([sys.executable, "-c", "import sys, appliance.recorder, appliance.offload; "
                             "print(sorted({m.split('.')[0] for m in sys.modules} & {'boto3', 'botocore', 'cryptography'}))"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
