"""`callrec seal`: a plain store sealed in place, resumable after a kill at any moment, with
`verify` passing before and after and every recording opened again with the recovery key."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from appliance.store.archive import sha256_file
from appliance.store.catalogue import Catalogue
from appliance.config import DEFAULT_PURPOSES, StoreConfig
from appliance.store.evidence import verify_store
from appliance.store.keyslots import KeySlots
from appliance.store.retention import Store
from appliance.store.sealing import Opener, is_sealed_stream
from conftest import callrec
from test_store import add_call

RECOVERY = re.compile(r"^\s+([A-Z2-7]{5}(?:-[A-Z2-7]{1,5})+)\s*$", re.M)


@pytest.fixture
def store(tmp_path):
    catalogue = Catalogue(tmp_path)
    yield Store(catalogue, tmp_path, DEFAULT_PURPOSES, StoreConfig(min_free_mb=0, min_free_hours=0))
    catalogue.close()


def recordings(store: Store) -> dict:
    return {call["id"]: (store.data_dir / call["file"]).read_bytes() for call in store.catalogue.calls()}


def test_a_plain_store_is_sealed_in_place_and_verifies_before_and_after(store, tmp_path):
    for days in (3, 2, 1):
        add_call(store, days, size=200_000)
    plain = recordings(store)
    (tmp_path / "quarantine").mkdir()
    (tmp_path / "quarantine" / "7-spool.wav").write_bytes(b"RIFF" + b"q" * 5000)
    assert verify_store(store.catalogue, tmp_path) == []
    result = callrec("seal", "--data", str(tmp_path))
    recovery = RECOVERY.search(result.stdout).group(1)
    assert "sealed 3/3 recordings" in result.stdout and "1 quarantined spools sealed" in result.stdout
    assert verify_store(store.catalogue, tmp_path) == []
    assert callrec("verify", "--data", str(tmp_path)).returncode == 0
    opener = Opener(KeySlots(tmp_path).unlock_with_recovery(recovery))
    for call_id, content in recordings(store).items():
        assert is_sealed_stream(content) and plain[call_id][:64] not in content
        path = tmp_path / store.catalogue.get_call(call_id)["file"]
        assert b"".join(opener.read_stream(path)) == plain[call_id]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"3225551234" not in path.read_bytes(), f"{path} holds the caller's number"
    quarantined = tmp_path / "quarantine" / "7-spool.wav"
    assert b"".join(opener.read_stream(quarantined)) == b"RIFF" + b"q" * 5000
    again = callrec("seal", "--data", str(tmp_path))
    assert RECOVERY.search(again.stdout) is None, "the recovery key is shown once only"
    assert "0 recordings sealed now, 3 were already" in again.stdout


def test_sealing_killed_at_any_moment_resumes_and_loses_nothing(store, tmp_path):
    for i in range(120):
        add_call(store, 1 + i / 1000, size=500_000)
    plain = recordings(store)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    recovery, kills = None, 0
    for delay in (0.0, 0.05, 0.1, 0.15):
        process = subprocess.Popen([sys.executable, "-m", "appliance", "seal", "--data", str(tmp_path)],
                                   stdout=subprocess.PIPE, text=True, env=env)
        out = ""
        while "sealed " not in out and process.poll() is None:   # the first recording is done
            out += process.stdout.readline()
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        out += process.communicate()[0]
        recovery = recovery or (RECOVERY.search(out).group(1) if RECOVERY.search(out) else None)
        # Whenever it stopped, each recording or its sealed copy matches the catalogued hash.
        for call in store.catalogue.calls():
            path = tmp_path / call["file"]
            copy = path.with_name(path.name + ".sealing")
            assert call["sha256"] in {sha256_file(path), copy.exists() and sha256_file(copy)}
    assert kills >= 2
    callrec("seal", "--data", str(tmp_path))
    assert not list(tmp_path.rglob("*.sealing"))
    opener = Opener(KeySlots(tmp_path).unlock_with_recovery(recovery))
    for call_id, content in plain.items():
        path = tmp_path / store.catalogue.get_call(call_id)["file"]
        assert b"".join(opener.read_stream(path)) == content
    assert verify_store(store.catalogue, tmp_path) == []




def test_the_technician_gives_the_owner_a_slot_while_sealing(store, tmp_path):
    add_call(store, 1)
    password = "a long owner password 7"
    callrec("user", "password", "owner", "--role", "admin", "--data", str(tmp_path),
            input=f"{password}\n{password}\n")
    wrong = callrec("seal", "--data", str(tmp_path), "--user", "owner", input="not the password\n", check=False)
    assert wrong.returncode == 2 and "wrong user name or password" in wrong.stderr
    assert not KeySlots(tmp_path).exists(), "a wrong password changes nothing"
    result = callrec("seal", "--data", str(tmp_path), "--user", "owner", input=f"{password}\n")
    recovery = RECOVERY.search(result.stdout).group(1)
    slots = KeySlots(tmp_path)
    assert slots.unlock(slots.holders()[0], password) == slots.unlock_with_recovery(recovery)
    again = callrec("seal", "--data", str(tmp_path), "--user", "owner", input=f"{password}\n", check=False)
    assert again.returncode == 2 and "next login" in again.stderr
