"""A stolen card gives nothing away. A sealed appliance records an analog call (caller ID, keys
typed) and a SIP call, the owner names the caller, writes a note and holds a call, the offloader
copies both to a NAS; everything stops and the data folder, the configuration and the NAS folder
are copied as a thief would. The copies hold no audio anything can decode, none of the person's
numbers, name, note, hold reason or keys in any written form, and nothing that signs as the device.
The box then records a new call with no one logged in; a login plays every call, and the
recovery key alone opens the stolen copy."""

import io
import json
import os
import shutil
import stat
import zipfile

import av
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance import signer
from appliance.config import load_config
from appliance.offload import Offloader
from appliance.sip import g711
from appliance.store.catalogue import Catalogue
from appliance.store.evidence import verify_bundle
from appliance.store.keyslots import KeySlots
from appliance.store.sealing import Opener
from conftest import PASSWORD, RATE, callrec, tone, tone_level, wait_for, write_config, write_scenario, write_wav
from sipp.harness import write_pcap
from test_offload import FAST, Nas, offload_table
from test_sealed_audio import decodes
from test_sip import Trunk, call_through
from test_web import login, post

NUMBER = "+3225557788"
NATIONAL = "02 555 77 88"
DIALLED = "0470987654"
LATER = "+3225550909"
NAME = "Anouk Vermeersch-Ødegaard"
NOTE = "quoted 1240 euros for the oak table"
REASON = "the customer disputes the quote"
KEYS = "5813#"
LINE_HZ = 700.0
RECOVERY_LINE = "    "


def written_forms() -> list[bytes]:
    """The person's number, the dialled number, name, note and hold reason in every form they may
    be written in: E.164, with 00, national, grouped, as JSON escapes, and the name in UTF-16. (Keys
    typed are single characters: the catalogue is checked for them below.)"""
    texts = [NUMBER, NUMBER[1:], "00" + NUMBER[1:], "0" + NUMBER[3:], NATIONAL, "+32 2 555 77 88",
             DIALLED, "+32" + DIALLED[1:], "32" + DIALLED[1:], "0470 98 76 54", LATER, LATER[1:], "0" + LATER[3:],
             NAME, NOTE, REASON]
    escaped = [json.dumps(text)[1:-1] for text in texts]
    return sorted({text.encode() for text in texts + escaped} | {NAME.encode("utf-16-le"), NAME.encode("utf-16-be")})


def files_under(*folders):
    """Every regular file under `folders`, but the simulated phone line's (the line, not the box)."""
    return [path for folder in folders for path in folder.rglob("*")
            if path.is_file() and "simulation" not in path.parts]


def residue(*folders) -> list[str]:
    return [f"{path}: {form!r}" for path in files_under(*folders) for form in written_forms()
            if form in path.read_bytes()]


def signing_keys_in(files, device_public: bytes) -> list[str]:
    """Files a thief could sign as the device with: a private key in PEM or DER, or 32 bytes (raw
    or hex) that are the device key's seed."""
    found = []
    for path in files:
        content = path.read_bytes()
        if b"PRIVATE KEY" in content:
            found.append(f"{path}: a PEM private key")
        for load in (serialization.load_pem_private_key, serialization.load_der_private_key):
            try:
                load(content, password=None)
                found.append(f"{path}: loads as a private key")
            except (ValueError, TypeError):
                pass
        for seed in (content, content.strip()):
            try:
                raw = bytes.fromhex(seed.decode()) if len(seed) == 64 else seed
            except (UnicodeDecodeError, ValueError):
                continue
            if len(raw) == 32 and Ed25519PrivateKey.from_private_bytes(raw).public_key().public_bytes(
                    serialization.Encoding.Raw, serialization.PublicFormat.Raw) == device_public:
                found.append(f"{path}: the device key's seed")
    return found


def played(data: bytes) -> np.ndarray:
    """The first channel of a recording, decoded as a player would, at RATE."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        pcm = b"".join(bytes(out.planes[0])[:out.samples * 2] for frame in container.decode(stream)
                       for out in resampler.resample(frame))
    return np.frombuffer(pcm, dtype="<i2") / 32768.0


def copy_as_a_thief(sources: dict, to) -> None:
    """Every file of each folder, as they are (sockets and pipes, which hold nothing on a card, left out)."""
    def special(folder, names):
        return [name for name in names
                if not stat.S_ISREG(mode := os.lstat(os.path.join(folder, name)).st_mode) and not stat.S_ISDIR(mode)]
    for name, folder in sources.items():
        shutil.copytree(folder, to / name, ignore=special, symlinks=True)


@pytest.fixture
def nas(tmp_path):
    target = Nas(tmp_path / "ssh")
    target.start()
    yield target
    target.stop()


def test_a_stolen_card_and_offload_copy_give_nothing_away(tmp_path, nas):
    data, run = tmp_path / "data", tmp_path / "run"          # run: /run/callrec on the box, in RAM
    analog, line = tmp_path / "analog", tmp_path / "line"     # the box's configuration; the phone line's
    analog.mkdir()
    line.mkdir()
    config = write_config(analog, recorder={"data_dir": str(data), "runtime_dir": str(run), "ring_gap_s": 3.0},
                          line={"notice_incoming": False, "pause_code": "*9"})
    config.write_text(config.read_text() + offload_table({**FAST, **nas.settings()}))

    # The technician seals the new box and gives the owner a key slot; the recovery key is shown once.
    callrec("user", "password", "owner", "--role", "admin", "--data", str(data), input=f"{PASSWORD}\n{PASSWORD}\n")
    sealed = callrec("seal", "--config", str(config), "--user", "owner", input=f"{PASSWORD}\n")
    recovery = next(line.strip() for line in sealed.stdout.splitlines() if line.startswith(RECOVERY_LINE))
    service = signer.start(data, run)

    # An analog call: the caller's number by modem, keys typed during the call; a SIP call out.
    line_audio = write_wav(line / "line.wav", tone(LINE_HZ, 4.0, 0.05))      # quiet: the keys are heard over it
    scenario = write_scenario(line, [{"direction": "incoming", "at": 0.5, "rings": 1, "caller_id": NUMBER,
                                        "audio": str(line_audio), "dtmf": [{"at": 1.0, "digits": KEYS}]}],
                              ring_on_s=0.8, ring_off_s=1.2)
    callrec("simulate", str(scenario), "--config", str(config), "--data", str(data))
    trunk = Trunk(tmp_path)
    write_pcap(tmp_path / "caller.pcap", tone(440.0, 3.0, 0.5), g711.PCMU, 0x1111)
    write_pcap(tmp_path / "callee.pcap", tone(1000.0, 3.0, 0.5), g711.PCMU, 0x2222)
    trunk.start(transport="tcp", outgoing="off")
    try:
        mu_law = {"pt": "0", "codec": "PCMU"}
        call_through(trunk, "uac.xml", "uas.xml", 3000, inbound=False, transport="t1",
                     caller_keys=mu_law, callee_keys=mu_law, service=DIALLED)
        trunk.calls()
    finally:
        trunk.stop()

    # The owner logs in (the store opens), names the caller, writes a note, holds the SIP call;
    # the offloader copies both calls, their manifests signed once the signer has the secret.
    from web import create_app

    app = create_app(config, secure_cookies=False)
    try:
        owner = login(app, "owner")
        catalogue = Catalogue(data)
        analog_call, sip_call = sorted(catalogue.calls(), key=lambda call: call["line"] != "t1")
        assert post(owner, "/contacts/add", number=NATIONAL, name=NAME, company="", note="").status_code == 302
        assert post(owner, f"/calls/{analog_call['id']}/notes", notes=NOTE).status_code == 302
        assert post(owner, f"/calls/{sip_call['id']}/hold", reason=REASON).status_code == 302
        page = owner.get(f"/calls/{analog_call['id']}").data.decode()
        assert NAME in page and NOTE in page
        plain = {call["id"]: owner.get(f"/calls/{call['id']}/download").data for call in (analog_call, sip_call)}
        offloader = Offloader(load_config(config).offload, catalogue, data, run)
        offloader.start()
        try:
            assert wait_for(lambda: offloader.offloaded == 2, 30)
        finally:
            offloader.stop(5)
        catalogue.close()
    finally:
        app.extensions["callrec"].close()
        service.stop(timeout=2)
    assert tone_level(played(plain[analog_call["id"]]), LINE_HZ) > 0.02

    # Everything stopped: a thief copies the card's data and configuration, and the NAS.
    stolen = tmp_path / "stolen"
    copy_as_a_thief({"data": data, "config": analog, "nas": nas.folder}, stolen)
    shutil.copy(tmp_path / "appliance.toml", stolen / "config" / "sip-appliance.toml")
    assert residue(stolen) == []
    files = files_under(stolen / "data", stolen / "nas")
    control = tmp_path / "control.bin"
    control.write_bytes(plain[sip_call["id"]])
    assert decodes(control)                     # the check below tells audio when it sees it
    assert any("archive" in path.parts for path in files) and len(list((stolen / "nas").rglob("*.json"))) == 2
    needles = [audio[at:at + 32] for audio in plain.values() for at in range(1000, len(audio) - 32, len(audio) // 12)]
    needles = [needle for needle in needles if len(set(needle)) > 8]    # not a run of silence
    assert len(needles) >= 10
    for path in files:
        content = path.read_bytes()
        assert not decodes(path), f"{path} decodes as audio"
        assert not [needle for needle in needles if needle in content], f"{path} holds a piece of a recording"
    device_public = bytes.fromhex((data / "keys" / "device-ed25519.pub").read_text().strip())
    assert signing_keys_in(files_under(stolen), device_public) == []

    # After a power cut, the box records a new call with no one logged in.
    later = write_scenario(line, [{"direction": "incoming", "at": 0.5, "rings": 1, "caller_id": LATER,
                                     "audio": str(line_audio)}], ring_on_s=0.8, ring_off_s=1.2)
    callrec("simulate", str(later), "--config", str(config), "--data", str(data))
    catalogue = Catalogue(data)
    calls = catalogue.calls()
    catalogue.close()
    assert len(calls) == 3 and all(call["state"] == "complete" and call["number"].startswith("sealed:") for call in calls)
    assert residue(data) == []

    # A user's password opens every call in the web UI…
    app = create_app(config, secure_cookies=False)
    try:
        owner = login(app, "owner")
        for call in calls:
            audio = owner.get(f"/calls/{call['id']}/download")
            assert audio.status_code == 200
            if call["id"] in plain:
                assert audio.data == plain[call["id"]]
            samples = played(audio.data)
            assert len(samples) / RATE > 2.5
            if call["line"] == "t1":                    # the analog line's tone (the SIP parties send silence)
                assert tone_level(samples, LINE_HZ) > 0.02
    finally:
        app.extensions["callrec"].close()

    # … and the recovery key alone opens the stolen copy, off the box: a signed bundle of every call.
    bundle = tmp_path / "recovered.zip"
    callrec("export", *[str(call["id"]) for call in calls[:2]], "--out", str(bundle), "--data", str(stolen / "data"),
            input=recovery + "\n")
    problems, manifest = verify_bundle(bundle)
    assert problems == []
    with zipfile.ZipFile(bundle) as opened:
        for listed in manifest["calls"]:
            assert opened.read(listed["recording"]) == plain[listed["id"]]
    numbers = {listed["id"]: listed["number"] for listed in manifest["calls"]}
    assert numbers[analog_call["id"]] == NUMBER
    # Each key typed is sealed on its own in the copy, and opens with the recovery key alone.
    opener = Opener(KeySlots(stolen / "data").unlock_with_recovery(recovery))
    copy = Catalogue(stolen / "data")
    keys = [key for _offset, key in copy.digits(analog_call["id"])]
    copy.close()
    assert keys and all(key.startswith("sealed:") for key in keys)
    assert "".join(opener.open_field(key, "digit") for key in keys) == KEYS
