"""Sealed audio: in a sealed store no file of the data folder holds audio anyone can play, calls
from an analog line and a SIP trunk play through the web only once a login has unlocked the
store, a call cut by `kill -9` is recovered sealed, and `callrec verify` works while locked."""

import io
import os
import shutil
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest

from appliance import signer
from appliance.clock import iso_utc
from appliance.offload import Offloader
from appliance.store.archive import SPOOL_DIR, encode_spool, record_archive
from appliance.store.catalogue import Catalogue
from appliance.store.evidence import verify_bundle
from appliance.store.keyslots import KeySlots, recovery_text
from appliance.store.sealing import Opener, Sealer, is_sealed_stream
from appliance.store.spool import SpoolWriter
from conftest import PASSWORD, RATE, calls_json, callrec, iso_seconds, tone, tone_level, wait_for, write_config, \
    write_scenario, write_wav
from sipp.harness import SIPP_PCAPS, RtpEndpoint, pcap_audio, read_stereo
from test_sip import CALLER_HZ, Trunk, best_match, call_through, levels
from test_crash_recovery import killed_during_the_call
from test_full_disk import fill, small_disk  # noqa: F401 (a fixture)
from test_offload import appliance, check_copy, object_store  # noqa: F401 (a fixture)
from test_web import login

SEGMENT_S = 0.5
LOCKED = b"The store is locked since start-up"


def segment_freq(k: int) -> float:
    """The line plays 400 Hz, 500 Hz, … each for half a second: frequency tells the time."""
    return 400.0 + 100.0 * k


def steps(segments: int) -> np.ndarray:
    return np.concatenate([tone(segment_freq(k), SEGMENT_S, 0.4) for k in range(segments)])


def store_files(data):
    """Every file of the data folder but the simulated phone line's (the line, not the store)."""
    return [path for path in data.rglob("*") if path.is_file() and "simulation" not in path.parts]


def decodes(path) -> bool:
    """Whether PyAV finds audio it can decode in the file."""
    try:
        with av.open(str(path)) as container:
            return any(True for _ in container.decode(audio=0))
    except Exception:           # whatever FFmpeg makes of it: it is not audio
        return False


def assert_no_audio_in_the_clear(data, plain: list[bytes], scratch) -> None:
    """No file holds a piece of the plain recordings, starts like a sound file, or decodes."""
    needles = [p[at:at + 32] for p in plain for at in range(len(p) // 5, len(p) - 32, len(p) // 5)]
    assert needles and all(any(needle) for needle in needles)
    control = scratch / "plain.bin"
    control.write_bytes(plain[0])
    assert decodes(control)                 # the check below can tell audio when it sees it
    files = store_files(data)
    assert any(SPOOL_DIR in f.parts or "archive" in f.parts for f in files)
    for path in files:
        content = path.read_bytes()
        assert not content.startswith((b"RIFF", b"OggS", b"fLaC")), path
        assert not any(needle in content for needle in needles), path
        assert not decodes(path), path


def web_app(config):
    """The web UI of the appliance, with an admin; the store not unlocked yet."""
    from web import create_app

    app = create_app(config, secure_cookies=False)
    app.extensions["callrec"].accounts.add_user("admin", PASSWORD, "admin", None)
    return app


def samples_of(wav: bytes) -> np.ndarray:
    with av.open(io.BytesIO(wav)) as container:
        pcm = b"".join(bytes(f.planes[0])[:f.samples * 2] for f in container.decode(audio=0))
    return np.frombuffer(pcm, dtype="<i2") / 32768.0


def sealed_call(data, seconds: float, line: str) -> dict:
    """A call of a tone, recorded and finalised as the recorder does in a sealed store."""
    catalogue = Catalogue(data)
    (data / SPOOL_DIR).mkdir(exist_ok=True)
    writer = SpoolWriter(data / SPOOL_DIR / f"{line}-1.wav", RATE, flush_interval=0.1, sealer=Sealer.load(data))
    writer.append((tone(440, seconds, 0.3) * 32767).astype("<i2").tobytes())
    writer.close()
    now = iso_utc(1_800_000_000)
    call_id = catalogue.add_call(line=line, direction="incoming", number="+3225550404", started_at=now,
                                 answered_at=now, purpose="training", state="recording",
                                 spool=f"{SPOOL_DIR}/{line}-1.wav", sample_rate=RATE)
    encoded = encode_spool(catalogue, data, call_id, "opus", 16000, Sealer.load(data), writer.stream)
    row = record_archive(catalogue, encoded, "complete", ended_at=now)
    catalogue.close()
    return row


def test_an_analog_call_is_sealed_on_the_card_and_plays_once_unlocked(tmp_path):
    data = tmp_path / "data"
    config = write_config(tmp_path, recorder={"format": "wav", "data_dir": str(data)})
    scenario = write_scenario(tmp_path, [{"direction": "outgoing", "at": 0.5,
                                          "audio": str(write_wav(tmp_path / "steps.wav", steps(8)))}])
    secret = KeySlots(data).create()
    callrec("simulate", str(scenario), "--config", str(config), "--data", str(data))
    [call] = calls_json(data)
    assert call["state"] == "complete" and call["file"].endswith(".wav")
    assert callrec("verify", "--data", str(data)).returncode == 0        # locked: no key anywhere

    app = web_app(config)
    try:
        client = login(app, "admin")
        refused = client.get(f"/calls/{call['id']}/audio")
        assert refused.status_code == 423 and LOCKED in refused.data
        token = app.extensions["callrec"].accounts.add_token("crm", "admin", None, "test")
        api = client.get(f"/api/v1/calls/{call['id']}/audio", headers={"Authorization": f"Bearer {token}"})
        assert api.status_code == 423 and api.json["error"].startswith("The store is locked since start-up")
        assert client.get(f"/calls/{call['id']}/waveform.svg").status_code == 200    # its peaks need no key

        app.extensions["callrec"].unlock(secret)
        played = client.get(f"/calls/{call['id']}/audio")
        assert played.status_code == 200 and played.mimetype == "audio/wav"
        plain = played.data
        # A seek: the range crosses from one sealed record to the next.
        part = client.get(f"/calls/{call['id']}/audio", headers={"Range": "bytes=60000-79999"})
        assert part.status_code == 206 and part.data == plain[60000:80000]
        assert part.headers["Content-Range"] == f"bytes 60000-79999/{len(plain)}"
    finally:
        app.extensions["callrec"].close()

    samples = samples_of(plain)
    assert abs(len(samples) / RATE - call["duration_s"]) < 0.01
    preroll = iso_seconds(call["started_at"]) - iso_seconds(call["recording_started_at"])
    for k in range(8):
        at = int((preroll + k * SEGMENT_S + 0.1) * RATE)
        assert tone_level(samples[at:at + int(0.3 * RATE)], segment_freq(k)) > 0.25, k
    assert_no_audio_in_the_clear(data, [plain], tmp_path)

    # A bundle holds the plain recording, checkable offline; the manifest names both hashes.
    # `callrec export` asks for the recovery key of a sealed store.
    bundle = tmp_path / "bundle.zip"
    callrec("export", str(call["id"]), "--out", str(bundle), "--data", str(data), input=recovery_text(secret) + "\n")
    problems, manifest = verify_bundle(bundle)
    [listed] = manifest["calls"]
    assert problems == [] and zipfile.ZipFile(bundle).read(listed["recording"]) == plain
    assert listed["sha256"] == call["sha256"] and listed["plain_sha256"] != call["sha256"]
    wrong = callrec("export", str(call["id"]), "--out", str(tmp_path / "no.zip"), "--data", str(data),
                    input=recovery_text(bytes(32)) + "\n", check=False)
    assert wrong.returncode == 2 and "belongs to another store" in wrong.stderr and not (tmp_path / "no.zip").exists()

    # Tampering with the sealed file is found without the key.
    archived = data / call["file"]
    content = bytearray(archived.read_bytes())
    content[len(content) // 2] ^= 1
    archived.write_bytes(bytes(content))
    checked = callrec("verify", "--data", str(data), check=False)
    assert checked.returncode == 1 and "does not match its SHA-256" in checked.stdout


def test_a_sip_call_is_sealed_on_the_card_and_plays_once_unlocked(tmp_path):
    trunk = Trunk(tmp_path)
    shutil.copy(SIPP_PCAPS / "g711a.pcap", trunk.folder / "callee.pcap")      # speech from the shop
    secret = KeySlots(tmp_path / "data").create()
    trunk.start()
    caller = RtpEndpoint(tone(CALLER_HZ, 4.0, 0.5))
    caller.start()
    try:
        call_through(trunk, "uac_quiet.xml", "uas.xml", 4000, caller_keys={"rtp_port": str(caller.port)})
        [call] = trunk.calls()
    finally:
        caller.close()
        trunk.stop()
    assert call["state"] == "complete" and call["channels"] == 2 and call["file"].endswith(".flac")

    app = web_app(tmp_path / "appliance.toml")
    try:
        client = login(app, "admin")
        assert client.get(f"/calls/{call['id']}/download").status_code == 423
        app.extensions["callrec"].unlock(secret)
        downloaded = client.get(f"/calls/{call['id']}/download")
        assert downloaded.status_code == 200 and downloaded.data.startswith(b"fLaC")
    finally:
        app.extensions["callrec"].close()
    (tmp_path / "played.flac").write_bytes(downloaded.data)
    left, right = read_stereo(tmp_path / "played.flac")
    assert levels(left, 0.2, 3.5)[CALLER_HZ] > 0.4
    assert best_match(right[int(1.2 * RATE):int(2.2 * RATE)], pcap_audio(trunk.folder / "callee.pcap")) > 0.95
    assert_no_audio_in_the_clear(tmp_path / "data", [downloaded.data], tmp_path)


def test_a_sealed_call_cut_by_kill_9_is_recovered_sealed_up_to_a_second_before_the_kill(tmp_path):
    source = write_wav(tmp_path / "steps.wav", steps(30))
    data = tmp_path / "data"
    config = write_config(tmp_path, recorder={"data_dir": str(data)})
    scenario = write_scenario(tmp_path, [{"direction": "outgoing", "at": 0.5, "audio": str(source)}])
    secret = KeySlots(data).create()
    off_hook, killed_at = killed_during_the_call(config, scenario, data, 5.3)
    [spool] = (data / SPOOL_DIR).iterdir()
    assert is_sealed_stream(spool.read_bytes()) and not decodes(spool)

    empty = tmp_path / "empty.toml"
    empty.write_text("")
    restart = callrec("simulate", str(empty), "--config", str(config), "--data", str(data))
    assert "recovered call" in restart.stderr
    [call] = calls_json(data)
    assert call["state"] == "interrupted" and call["format"] == "wav" and call["sha256"]
    assert is_sealed_stream((data / call["file"]).read_bytes())
    assert callrec("verify", "--data", str(data)).returncode == 0

    app = web_app(config)
    try:
        client = login(app, "admin")
        assert client.get(f"/calls/{call['id']}/waveform.svg").status_code == 423      # no peaks without the key
        app.extensions["callrec"].unlock(secret)
        plain = client.get(f"/calls/{call['id']}/audio").data
        waveform = client.get(f"/calls/{call['id']}/waveform.svg")
        assert waveform.status_code == 200 and waveform.data.count(b"V") > 100          # drawn from the audio
    finally:
        app.extensions["callrec"].close()
    samples = samples_of(plain)
    assert call["samples"] == len(samples) and call["duration_s"] == round(len(samples) / RATE, 3)   # known locked
    preroll = off_hook - iso_seconds(call["recording_started_at"])
    heard_until = len(samples) / RATE - preroll
    lost = (killed_at - off_hook) - heard_until
    print(f"\nsealed: kill -9 {killed_at - off_hook:.2f} s into the call lost {lost:.2f} s of audio")
    assert -0.1 < lost <= 1.3         # one flush interval (1 s), and the time to notice the call
    k = int(heard_until / SEGMENT_S) - 1
    at = int((preroll + k * SEGMENT_S + 0.1) * RATE)
    assert tone_level(samples[at:at + int(0.3 * RATE)], segment_freq(k)) > 0.25
    assert_no_audio_in_the_clear(data, [plain], tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (root only)")
def test_a_disk_too_full_to_encode_keeps_the_sealed_spool_as_the_archive(tmp_path, small_disk):
    from appliance.store.recording import open_recording

    data = small_disk
    secret = KeySlots(data).create()
    catalogue = Catalogue(data)
    (data / SPOOL_DIR).mkdir()
    writer = SpoolWriter(data / SPOOL_DIR / "t1-1.wav", RATE, flush_interval=0.1, sealer=Sealer.load(data))
    writer.append((tone(440, 3.0, 0.4) * 32767).astype("<i2").tobytes())
    writer.close()
    call_id = catalogue.add_call(line="t1", direction="outgoing", started_at="2026-11-23T10:00:00.000Z",
                                 purpose="training", state="recording", spool=f"{SPOOL_DIR}/t1-1.wav")
    fill(data)
    encoded = encode_spool(catalogue, data, call_id, "flac", 16000, Sealer.load(data), writer.stream)
    (data / "filler").unlink()
    row = record_archive(catalogue, encoded, "complete")
    catalogue.close()
    assert row["format"] == "wav" and row["samples"] == 3 * RATE and row["file"].endswith(".wav")
    archived = data / row["file"]
    assert is_sealed_stream(archived.read_bytes()) and not decodes(archived)
    with open_recording(archived, Opener(secret)) as plain:
        samples = samples_of(plain.read())
    assert len(samples) == 3 * RATE and tone_level(samples[:RATE], 440) > 0.35


def test_the_offload_target_gets_the_sealed_files_as_they_are(tmp_path, object_store):
    config = appliance(tmp_path, object_store.settings())
    data = config.recorder.data_dir
    secret = KeySlots(data).create()
    call = sealed_call(data, 2.0, "t1")
    service = signer.start(data, tmp_path / "run")      # its manifest is signed once a login unlocked it
    service.key.unlock(secret)
    try:
        catalogue = Catalogue(data)
        offloader = Offloader(config.offload, catalogue, data, tmp_path / "run")
        offloader.start()
        assert wait_for(lambda: offloader.offloaded == 1, 15)
    finally:
        offloader.stop(5)
        catalogue.close()
        service.stop(timeout=2)
    key = "shop-1/" + str(Path(call["file"]).relative_to("archive"))
    copy = object_store.get(key)
    assert copy == (data / call["file"]).read_bytes() and is_sealed_stream(copy)
    check_copy(call, copy, object_store.get(key + ".json"))
