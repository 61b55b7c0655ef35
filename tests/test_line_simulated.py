"""End to end on the simulated line: gpiozero's MockFactory drives the hook and ring pins, ALSA
file-plugin PCMs fed through a FIFO in real time carry the line audio, and `callrec simulate` runs
the real recorder. Each scenario runs once per module; the tests read what it left behind."""

import hashlib

import numpy as np
import pytest

from appliance.codec import decode_to_pcm
from appliance.config import demo_path
from appliance.simulate import line_out_path
from conftest import (RATE, calls_json, callrec, iso_seconds, recording, tone, tone_level,
                      write_config, write_scenario, write_wav)


@pytest.fixture(scope="module")
def hook_run(tmp_path_factory, speech):
    """An incoming call with chatter and a 300 ms flash, then an outgoing call with a 2 s on-hook."""
    folder = tmp_path_factory.mktemp("hook")
    config = write_config(folder)
    scenario = write_scenario(folder, [
        {"direction": "incoming", "at": 0.5, "rings": 2, "audio": str(speech), "talk": 4.0,
         "bounce_ms": 15, "flash_at": [2.0], "flash_ms": 300},
        {"direction": "outgoing", "at": 10.0, "talk": 5.0, "bounce_ms": 15,
         "flash_at": [1.0], "flash_ms": 2000},
    ], ring_on_s=0.8, ring_off_s=1.2)
    data = folder / "data"
    callrec("simulate", str(scenario), "--config", str(config), "--data", str(data))
    return data, calls_json(data), speech


def test_chatter_and_a_short_flash_keep_one_call(hook_run):
    data, calls, _ = hook_run
    incoming = [c for c in calls if c["direction"] == "incoming"]
    assert len(incoming) == 1
    assert incoming[0]["flashes"] == 1 and incoming[0]["state"] == "complete"


def test_a_two_second_on_hook_splits_into_two_outgoing_calls(hook_run):
    data, calls, _ = hook_run
    outgoing = [c for c in calls if c["direction"] == "outgoing"]
    assert len(outgoing) == 2
    first, second = outgoing
    gap = iso_seconds(second["started_at"]) - iso_seconds(first["ended_at"])
    assert 1.8 < gap < 2.2
    assert all(c["answered_at"] is None and c["notice_played_at"] is None for c in outgoing)


def test_incoming_call_times_follow_the_line(hook_run):
    data, calls, _ = hook_run
    call = calls[0]
    assert call["direction"] == "incoming"
    ringing = iso_seconds(call["started_at"])
    answered = iso_seconds(call["answered_at"])
    ended = iso_seconds(call["ended_at"])
    assert 3.1 < answered - ringing < 3.5       # bursts of 0.8 s every 2 s, answered 0.5 s after the second
    assert 3.9 < ended - answered < 4.1
    # The recording runs from the pre-roll to the end of the flash window after the hang-up.
    assert 2.0 + 4.0 + 0.5 < call["duration_s"] < 2.0 + 4.0 + 0.9


def test_the_notice_is_played_once_into_the_line_right_after_the_answer(hook_run):
    data, calls, _ = hook_run
    call = calls[0]
    played = np.frombuffer(line_out_path(data, "t1").read_bytes(), dtype="<i2")
    notice = np.frombuffer(decode_to_pcm(demo_path("notice-en.wav"), RATE), dtype="<i2")
    assert len(notice) <= len(played) < len(notice) + RATE // 50   # once, padded to a whole period
    assert np.array_equal(played[:len(notice)], notice)
    assert not played[len(notice):].any()
    delay = iso_seconds(call["notice_played_at"]) - iso_seconds(call["answered_at"])
    assert 0 <= delay < 0.3
    assert call["notice_sha256"] == hashlib.sha256(demo_path("notice-en.wav").read_bytes()).hexdigest()


def test_the_recording_holds_the_conversation_from_its_first_word(hook_run):
    data, calls, speech = hook_run
    call = calls[0]
    heard = recording(data, call)
    said = np.frombuffer(decode_to_pcm(speech, RATE), dtype="<i2") / 32768.0
    # Where does the speech start in the recording? It should be one pre-roll after its start.
    envelope = lambda x: np.convolve(np.abs(x), np.ones(80) / 80, mode="same")
    corr = np.correlate(envelope(heard), envelope(said)[:RATE * 2], mode="valid")
    offset = np.argmax(corr) / RATE
    expected = iso_seconds(call["answered_at"]) - iso_seconds(call["recording_started_at"])
    assert abs(offset - expected) < 0.1
    assert 1.7 < expected < 2.2                                  # the 2 s pre-roll, less detection
    start = int(offset * RATE)
    first_word = slice(0, int(0.6 * RATE))
    similarity = np.corrcoef(envelope(heard[start:])[first_word], envelope(said)[first_word])[0, 1]
    assert similarity > 0.8


def test_the_archive_matches_the_catalogue(hook_run):
    data, calls, _ = hook_run
    for call in calls:
        archived = data / call["file"]
        assert call["sha256"] == hashlib.sha256(archived.read_bytes()).hexdigest()
        assert call["size_bytes"] == archived.stat().st_size
        assert call["samples"] / call["sample_rate"] == pytest.approx(call["duration_s"], abs=0.001)
        # 16 kbit/s Opus: at most 2 kB per second plus the container's pages.
        assert call["size_bytes"] < 2200 * call["duration_s"] + 4000
    assert not list((data / "spool").iterdir())


@pytest.mark.parametrize("preroll_s, heard", [(2.0, True), (0.0, False)])
def test_a_tone_sent_at_the_instant_of_off_hook_is_kept_only_thanks_to_the_preroll(
        tmp_path, preroll_s, heard):
    # A 40 ms tone at the very instant of off-hook, shorter than the 100 ms the debounce takes.
    audio = write_wav(tmp_path / "tone.wav", np.concatenate([tone(1000, 0.04, 0.5), np.zeros(RATE * 2)]))
    config = write_config(tmp_path, recorder={"preroll_s": preroll_s, "debounce_ms": 100})
    scenario = write_scenario(tmp_path, [{"direction": "outgoing", "at": 0.5, "audio": str(audio)}])
    callrec("simulate", str(scenario), "--config", str(config), "--data", str(tmp_path / "data"))
    [call] = calls_json(tmp_path / "data")
    samples = recording(tmp_path / "data", call)
    at = iso_seconds(call["started_at"]) - iso_seconds(call["recording_started_at"])
    window = samples[max(0, int((at - 0.15) * RATE)):int((at + 0.2) * RATE)]
    best = max(tone_level(window[i:i + 320], 1000) for i in range(0, max(1, len(window) - 320), 40))
    assert bool(best > 0.3) == heard
