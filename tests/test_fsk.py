"""FSK caller ID on the line audio: messages sent by minimodem (an independent modulator) in V.23
and Bell 202 tones, SDMF and MDMF, at the levels a line delivers, under line noise; what fails
its checksum names nobody; the simulated line sends it and the recorder catalogues it."""

import logging
import shutil
import subprocess

import numpy as np
import pytest

from appliance.analog.fsk import FskReceiver
from appliance.codec import decode_to_pcm
from appliance.config import RecorderConfig, load_config
from appliance.errors import ConfigError
from appliance.scenario import caller_id_signal, load_scenario, plan
from conftest import RATE, calls_json, callrec, write_config, write_scenario, write_wav

MINIMODEM_TONES = {"v23": ["--mark", "1300", "--space", "2100"], "bell202": ["--mark", "1200", "--space", "2200"]}
DBM0_TO_DBFS = -3.14        # a 0 dBm0 sine's peak is 3.14 dB under full scale (G.711 A-law)
NOISE_DBM0 = -55.0          # white line noise: 15 dB under the weakest caller ID tested


def with_checksum(message: bytes) -> bytes:
    """A message (type, length, body) completed by the byte that makes it sum to 0 mod 256."""
    return message + bytes([-sum(message) % 256])


def mdmf(*parameters: tuple[int, bytes]) -> bytes:
    """An MDMF call set-up message (type 0x80) holding the given (type, value) parameters."""
    body = b"".join(bytes([kind, len(value)]) + value for kind, value in parameters)
    return with_checksum(bytes([0x80, len(body)]) + body)


def sdmf(stamp: bytes, number: bytes) -> bytes:
    """A Bellcore SDMF message (type 0x04): MMDDHHMM then the number, or O / P."""
    return with_checksum(bytes([0x04, len(stamp + number)]) + stamp + number)


def minimodem(data: bytes, variant: str, folder, dbm0: float, *options: str, baud: str = "1200",
              rate: int = 48000, line_rate: int = RATE) -> np.ndarray:
    """`data` as minimodem sends it (each byte 8-N-1 unless `options` say otherwise) at `rate`,
    at `dbm0` per tone, resampled to `line_rate`, as float samples."""
    assert shutil.which("minimodem"), "minimodem is needed: apt-get install minimodem"
    source, wav = folder / "data.bin", folder / "fsk.wav"
    source.write_bytes(data)
    with open(source, "rb") as stdin:       # a file, not a pipe: minimodem fills pipe stalls with mark
        subprocess.run(["minimodem", "--tx", "-q", "-R", str(rate), "-f", str(wav), "--volume",
                        str(10 ** ((dbm0 + DBM0_TO_DBFS) / 20)), *MINIMODEM_TONES[variant], *options, baud],
                       stdin=stdin, check=True)
    return np.frombuffer(decode_to_pcm(wav, line_rate), dtype="<i2") / 32768.0


def transmission(message: bytes, variant: str, folder, dbm0: float, **kwargs) -> np.ndarray:
    """What an exchange sends: channel seizure (30 bytes of 0x55: alternating bits), 184 mark bits,
    then the message, each part from its own minimodem run."""
    return np.concatenate([
        minimodem(b"\x55" * 30, variant, folder, dbm0, **kwargs),
        minimodem(b"\xff" * 23, variant, folder, dbm0, "--startbits", "0", "--stopbits", "0", **kwargs),
        minimodem(message, variant, folder, dbm0, **kwargs)])


def on_the_line(signal: np.ndarray, rate: int = RATE) -> bytes:
    """The signal half a second into a second and a half of line noise, as s16 PCM."""
    sigma = 10 ** ((NOISE_DBM0 + DBM0_TO_DBFS) / 20) / np.sqrt(2)
    line = np.random.default_rng(0).normal(0, sigma, len(signal) + int(1.5 * rate))
    line[rate // 2:rate // 2 + len(signal)] += signal
    return (np.clip(line, -1, 32767 / 32768) * 32768).astype("<i2").tobytes()


def decode(pcm: bytes, variant: str, rate: int = RATE) -> list:
    """The messages a receiver finds, fed period by period as capture delivers them."""
    receiver = FskReceiver(rate, variant)
    found, period = [], rate * RecorderConfig().period_ms // 1000 * 2
    for at in range(0, len(pcm), period):
        found += receiver.feed(pcm[at:at + period])
    return found + receiver.flush()


@pytest.mark.parametrize("variant", ["v23", "bell202"])
@pytest.mark.parametrize("dbm0", [-40, -25, -10])
def test_mdmf_caller_id_is_read_at_every_level(tmp_path, variant, dbm0):
    message = mdmf((0x01, b"03211405"), (0x02, b"0201234567"), (0x07, b"BAKERY ANNA"))
    [found] = decode(on_the_line(transmission(message, variant, tmp_path, dbm0)), variant)
    assert (found.kind, found.number, found.name, found.date, found.time) == \
        ("mdmf", "0201234567", "BAKERY ANNA", "0321", "1405")
    assert found.number_reason is None and found.raw == message


@pytest.mark.parametrize("variant", ["v23", "bell202"])
def test_sdmf_caller_id_is_read(tmp_path, variant):
    message = sdmf(b"12312359", b"3225551234")
    [found] = decode(on_the_line(transmission(message, variant, tmp_path, -30)), variant)
    assert (found.kind, found.number, found.date, found.time) == ("sdmf", "3225551234", "1231", "2359")


@pytest.mark.parametrize("baud, rate", [("1188", 96000), ("1212", 96000)])
def test_a_bit_rate_a_per_cent_off_is_still_read(tmp_path, baud, rate):
    message = mdmf((0x02, b"0475123456"))
    [found] = decode(on_the_line(transmission(message, "v23", tmp_path, -25, baud=baud, rate=rate)), "v23")
    assert found.number == "0475123456"


@pytest.mark.parametrize("variant", ["v23", "bell202"])
@pytest.mark.parametrize("rate", [16000, 48000])
def test_the_other_sample_rates_of_the_line(tmp_path, variant, rate):
    message = mdmf((0x01, b"03211405"), (0x02, b"0475123456"))
    signal = transmission(message, variant, tmp_path, -30, line_rate=rate)
    [found] = decode(on_the_line(signal, rate), variant, rate)
    assert found.number == "0475123456"


@pytest.mark.parametrize("message, number, reason, name_reason", [
    (mdmf((0x01, b"03211405"), (0x04, b"P"), (0x08, b"P")), None, "private", "private"),
    (mdmf((0x01, b"03211405"), (0x04, b"O")), None, "unavailable", None),
    (sdmf(b"03211405", b"P"), None, "private", None),
])
def test_a_withheld_or_unavailable_number_gives_the_reason(tmp_path, message, number, reason, name_reason):
    [found] = decode(on_the_line(transmission(message, "bell202", tmp_path, -20)), "bell202")
    assert (found.number, found.number_reason, found.name_reason) == (number, reason, name_reason)


def test_a_bad_checksum_names_nobody_and_is_logged(tmp_path, caplog):
    good = mdmf((0x02, b"0201234567"))
    bad = good[:-1] + bytes([good[-1] ^ 0x01])
    caplog.set_level(logging.WARNING, logger="appliance.analog.fsk")
    assert decode(on_the_line(transmission(bad, "v23", tmp_path, -20)), "v23") == []
    assert "bad checksum" in caplog.text and bad.hex(" ") in caplog.text


def test_a_digit_changed_in_transit_is_caught_by_the_checksum(tmp_path, caplog):
    good = mdmf((0x02, b"0201234567"))
    changed = good.replace(b"0201234567", b"0201234568")        # one bit of one digit
    caplog.set_level(logging.WARNING, logger="appliance.analog.fsk")
    assert decode(on_the_line(transmission(changed, "bell202", tmp_path, -20)), "bell202") == []
    assert "bad checksum" in caplog.text


def test_messages_other_than_caller_id_are_ignored(tmp_path):
    waiting = with_checksum(bytes([0x82, 3, 0x0b, 1, 0xff]))      # message waiting: on
    assert decode(on_the_line(transmission(waiting, "v23", tmp_path, -20)), "v23") == []


def test_no_message_and_no_warning_from_speech_tones_or_noise(speech, caplog):
    said = np.frombuffer(decode_to_pcm(speech, RATE), dtype="<i2") / 32768.0
    t = np.arange(2 * RATE) / RATE
    steady = 0.1 * np.sin(2 * np.pi * 1300 * t)         # a long mark-like tone, then speech after it
    line = np.concatenate([steady, np.tile(said, 8), steady, np.random.default_rng(1).normal(0, 0.05, 10 * RATE)])
    pcm = (np.clip(line, -1, 32767 / 32768) * 32768).astype("<i2").tobytes()
    caplog.set_level(logging.WARNING, logger="appliance.analog.fsk")
    assert decode(pcm, "v23") == [] and decode(pcm, "bell202") == []
    assert caplog.text == ""


@pytest.mark.parametrize("variant", ["v23", "bell202"])
@pytest.mark.parametrize("timing, before_ring", [("before_ring", True), ("after_first_ring", False)])
def test_the_simulated_line_sends_the_scenario_caller_id_as_fsk(tmp_path, variant, timing, before_ring):
    path = write_scenario(tmp_path, [{"direction": "incoming", "at": 2.0, "rings": 2, "answered": False,
                                      "caller_id": "+3225551234", "caller_id_timing": timing}])
    scenario, base = load_scenario(path)
    layout = plan(scenario, base, ["t1"], RATE, caller_id={"t1": f"fsk-{variant}"})
    audio = layout.audio["t1"].tobytes()
    first_ring = int(2.0 * RATE) * 2
    heard_before, heard_after = decode(audio[:first_ring], variant), decode(audio[first_ring:], variant)
    [found] = heard_before if before_ring else heard_after
    assert found.number == "+3225551234" and not (heard_after if before_ring else heard_before)


def test_caller_id_keys_in_the_config(tmp_path, caplog):
    assert load_config(write_config(tmp_path, line={"caller_id": "fsk-v23"})).line[0].caller_id == "fsk-v23"
    assert load_config(write_config(tmp_path)).line[0].caller_id == "modem"
    old = write_config(tmp_path, line={"dtmf_caller_id": True})
    assert load_config(old).line[0].caller_id == "dtmf"
    assert 'dtmf_caller_id = true is now written caller_id = "dtmf"' in caplog.text


@pytest.mark.parametrize("line, words", [
    ({"caller_id": "fsk"}, "line[0].caller_id: Input should be 'modem', 'dtmf', 'fsk-v23' or 'fsk-bell202'"),
    ({"caller_id": "fsk-v23", "dtmf_caller_id": True}, "line[0]: dtmf_caller_id = true and caller_id = 'fsk-v23'"),
    ({"caller_id": "modem"}, "line[0]: caller_id = \"modem\" needs the line's modem"),
    ({"dtmf_caller_id": "yes"}, "line[0]: dtmf_caller_id: expected true or false"),
])
def test_a_wrong_caller_id_key_names_the_key_and_the_file(tmp_path, line, words):
    path = write_config(tmp_path, line=line)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert words in str(caught.value) and str(path) in str(caught.value)


def test_fsk_caller_id_names_the_recorded_call(tmp_path):
    """End to end in real time: two lines, V.23 after the first ring and Bell 202 before it. A
    caller ID heard in the call (a waiting call's) does not rename it."""
    waiting = np.concatenate([np.zeros(RATE // 4), caller_id_signal("fsk-v23", "0499999999", RATE, False)])
    config = write_config(tmp_path, line={"caller_id": "fsk-v23", "notice_incoming": False})  # nothing over it
    config.write_text(config.read_text() + '\n[[line]]\nname = "t2"\nhook_pin = 22\nhook_active = "low"\n'
                      'ring_pin = 23\nring_active = "low"\ncapture = "cap2"\nplayback = "play2"\n'
                      f'notice = "{load_config(config).line[0].notice.as_posix()}"\ncaller_id = "fsk-bell202"\n')
    scenario = write_scenario(tmp_path, [
        {"direction": "incoming", "line": "t1", "at": 0.5, "rings": 2, "caller_id": "+3225551234", "talk": 1.5,
         "audio": str(write_wav(tmp_path / "waiting.wav", waiting))},
        {"direction": "incoming", "line": "t2", "at": 1.5, "rings": 1, "caller_id": "025559876", "talk": 1.5,
         "caller_id_timing": "before_ring"}], ring_on_s=0.8, ring_off_s=1.2)
    callrec("simulate", str(scenario), "--config", str(config), "--data", str(tmp_path / "data"))
    numbers = {call["line"]: (call["direction"], call["number"]) for call in calls_json(tmp_path / "data")}
    assert numbers == {"t1": ("incoming", "+3225551234"), "t2": ("incoming", "025559876")}


def test_a_line_signal_from_a_sound_file_is_replayed_through_the_recorder(tmp_path):
    """A caller ID as an exchange sent it (here minimodem's V.23, as a recording of a real line
    would be), played from a sound file in the pause after the first ring: the scenario names no
    caller ID, the recorder finds it in the line audio."""
    signal = transmission(mdmf((0x02, b"025551234")), "v23", tmp_path, -20.0)
    recorded = write_wav(tmp_path / "exchange.wav", np.concatenate([np.zeros(RATE // 10), signal]))
    config = write_config(tmp_path, line={"caller_id": "fsk-v23", "notice_incoming": False})
    scenario = write_scenario(tmp_path, [
        {"direction": "incoming", "at": 0.5, "rings": 2, "talk": 1.0, "sounds": [{"at": 0.9, "audio": str(recorded)}]},
        {"direction": "incoming", "at": 6.5, "rings": 1, "talk": 1.0}], ring_on_s=0.8, ring_off_s=2.0)
    callrec("simulate", str(scenario), "--config", str(config), "--data", str(tmp_path / "data"))
    assert [call["number"] for call in calls_json(tmp_path / "data")] == ["025551234", None]
    missing = write_scenario(tmp_path, [{"direction": "incoming", "at": 0.5, "talk": 1.0,
                                         "sounds": [{"at": -1.0, "audio": str(recorded)}]}])
    refused = callrec("simulate", str(missing), "--config", str(config), "--data", str(tmp_path / "d2"), check=False)
    assert refused.returncode != 0 and "call[0].sounds: a sound at -1.0 s starts before the scenario does" in refused.stderr


def test_fsk_announced_by_a_ring_pulse_names_the_call_and_the_pulse_is_no_call(tmp_path):
    config = write_config(tmp_path, recorder={"ring_gap_s": 3.0}, line={"caller_id": "fsk-v23", "notice_incoming": False})
    scenario = write_scenario(tmp_path, [
        {"direction": "incoming", "at": 3.0, "rings": 1, "caller_id": "+3225551234", "talk": 1.0,
         "caller_id_timing": "before_ring_rp_as"}], ring_on_s=0.8, ring_off_s=1.2)
    callrec("simulate", str(scenario), "--config", str(config), "--data", str(tmp_path / "data"))
    assert [(c["direction"], c["state"], c["number"]) for c in calls_json(tmp_path / "data")] == \
        [("incoming", "complete", "+3225551234")]
    early = write_scenario(tmp_path, [{"direction": "incoming", "at": 1.0, "caller_id": "+3225551234", "talk": 1.0,
                                       "caller_id_timing": "before_ring_rp_as"}])
    refused = callrec("simulate", str(early), "--config", str(config), "--data", str(tmp_path / "d2"), check=False)
    assert refused.returncode != 0 and "call[0].at: a ring pulse and FSK before the first ring need it at" in refused.stderr
