"""End to end on the simulated line: gpiozero's MockFactory drives the hook and ring pins, ALSA
file-plugin PCMs fed through a FIFO in real time carry the line audio, and `callrec simulate` runs
the real recorder. Each scenario runs once per module; the tests read what it left behind."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from appliance.store.catalogue import Catalogue
from appliance.codec import decode_to_pcm
from appliance.config import demo_path
from appliance.simulate import line_out_path
from conftest import (PERIOD_FRAMES, RATE, calls_json, callrec, iso_seconds, recording, simulated_cards, stop, tone, tone_level, wait_for,
                      write_config, write_scenario, write_wav)


NOTICE_S = 3.5   # the demo notice lasts 3.38 s: the caller listens to it, then speaks


def caller_after_notice(folder, speech) -> str:
    """The caller's side: silence while the notice plays, then the spoken sentence."""
    said = np.frombuffer(decode_to_pcm(speech, RATE), dtype="<i2") / 32768.0
    return str(write_wav(folder / "caller.wav", np.concatenate([np.zeros(int(NOTICE_S * RATE)), said])))


@pytest.fixture(scope="module")
def hook_run(tmp_path_factory, speech):
    """An incoming call with chatter and a 300 ms flash, an outgoing call with a 2 s on-hook,
    then an incoming call nobody answers."""
    folder = tmp_path_factory.mktemp("hook")
    # The outgoing calls only dial: outgoing = "off" keeps any notice out of what the line played.
    config = write_config(folder, recorder={"ring_gap_s": 3.0}, line={"outgoing": "off"})
    scenario = write_scenario(folder, [
        {"direction": "incoming", "at": 0.5, "rings": 2, "caller_id": "+3225551234",
         "audio": caller_after_notice(folder, speech),
         "talk": NOTICE_S + 4.0, "bounce_ms": 15, "flash_at": [NOTICE_S + 2.0], "flash_ms": 300},
        {"direction": "outgoing", "at": 14.0, "talk": 5.0, "bounce_ms": 15,
         "flash_at": [1.0], "flash_ms": 2000},
        {"direction": "incoming", "at": 20.0, "rings": 1, "answered": False, "caller_id": "+32470123456"},
    ], ring_on_s=0.8, ring_off_s=1.2)
    data = folder / "data"
    callrec("simulate", str(scenario), "--config", str(config), "--data", str(data))
    return data, calls_json(data), speech


def test_chatter_and_a_short_flash_keep_one_call(hook_run):
    data, calls, _ = hook_run
    incoming = [c for c in calls if c["direction"] == "incoming" and c["state"] != "missed"]
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
    assert call["number"] == "+3225551234"          # from the caller-ID modem, between the rings
    ringing = iso_seconds(call["started_at"])
    answered = iso_seconds(call["answered_at"])
    ended = iso_seconds(call["ended_at"])
    assert 3.1 < answered - ringing < 3.5       # bursts of 0.8 s every 2 s, answered 0.5 s after the second
    assert NOTICE_S + 3.9 < ended - answered < NOTICE_S + 4.1
    # The recording runs from the pre-roll to the end of the flash window after the hang-up.
    assert 2.0 + NOTICE_S + 4.0 + 0.5 < call["duration_s"] < 2.0 + NOTICE_S + 4.0 + 0.9


def test_ringing_nobody_answers_is_a_missed_call_without_audio(hook_run):
    data, calls, _ = hook_run
    missed = calls[-1]
    assert missed["state"] == "missed" and missed["direction"] == "incoming"
    assert missed["file"] is None and missed["duration_s"] is None
    assert missed["number"] == "+32470123456"
    assert 0.7 < iso_seconds(missed["ended_at"]) - iso_seconds(missed["started_at"]) < 1.0


def test_the_notice_is_played_once_into_the_line_right_after_the_answer(hook_run):
    data, calls, _ = hook_run
    call = calls[0]
    played = np.frombuffer(line_out_path(data, "t1").read_bytes(), dtype="<i2")
    notice = np.frombuffer(decode_to_pcm(demo_path("notice-en.wav"), RATE), dtype="<i2")
    assert len(notice) <= len(played) < len(notice) + PERIOD_FRAMES   # once, padded to a whole period
    assert np.array_equal(played[:len(notice)], notice)
    assert not played[len(notice):].any()
    delay = iso_seconds(call["notice_played_at"]) - iso_seconds(call["answered_at"])
    assert 0 <= delay < 0.3
    assert call["notice_sha256"] == hashlib.sha256(demo_path("notice-en.wav").read_bytes()).hexdigest()


def envelope(x: np.ndarray) -> np.ndarray:
    """The loudness contour of a signal (10 ms moving average of its magnitude)."""
    return np.convolve(np.abs(x), np.ones(80) / 80, mode="same")


def find(needle: np.ndarray, haystack: np.ndarray) -> tuple[float, float]:
    """Where `needle` sounds in `haystack` (seconds) and how alike the two contours are there."""
    corr = np.correlate(envelope(haystack), envelope(needle), mode="valid")
    at = int(np.argmax(corr))
    return at / RATE, np.corrcoef(envelope(haystack[at:at + len(needle)]), envelope(needle))[0, 1]


def test_the_recording_holds_the_notice_then_the_conversation_from_its_first_word(hook_run):
    data, calls, speech = hook_run
    call = calls[0]
    heard = recording(data, call)
    answer = iso_seconds(call["answered_at"]) - iso_seconds(call["recording_started_at"])
    assert 1.7 < answer < 2.2                                    # the 2 s pre-roll, less detection
    notice = np.frombuffer(decode_to_pcm(demo_path("notice-en.wav"), RATE), dtype="<i2") / 32768.0
    notice_at, notice_likeness = find(notice, heard)
    said = np.frombuffer(decode_to_pcm(speech, RATE), dtype="<i2") / 32768.0
    first_words = said[:int(1.5 * RATE)]
    words_at, words_likeness = find(first_words, heard)
    assert notice_likeness > 0.8 and words_likeness > 0.8
    assert 0 <= notice_at - answer < 0.3                         # the notice right after the answer
    assert abs(words_at - (answer + NOTICE_S)) < 0.1             # the first word where it was said
    assert notice_at + len(notice) / RATE <= words_at            # the notice before the conversation


def test_the_archive_matches_the_catalogue(hook_run):
    data, calls, _ = hook_run
    recorded = [call for call in calls if call["state"] != "missed"]
    assert len(recorded) == 3
    for call in recorded:
        archived = data / call["file"]
        assert call["sha256"] == hashlib.sha256(archived.read_bytes()).hexdigest()
        assert call["size_bytes"] == archived.stat().st_size
        assert call["samples"] / call["sample_rate"] == pytest.approx(call["duration_s"], abs=0.001)
        assert call["clock_synced"] in (0, 1)
        # 16 kbit/s Opus: at most 2 kB per second plus the container's pages.
        assert call["size_bytes"] < 2200 * call["duration_s"] + 4000
    assert not list((data / "spool").iterdir())
    verified = callrec("verify", "--data", str(data))
    assert verified.stdout.strip().endswith("3 recording(s) and the ledger: OK")


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


def test_with_record_from_notice_end_nothing_before_the_end_of_the_notice_is_kept(tmp_path, speech):
    config = write_config(tmp_path, recorder={"record_from": "notice_end"})
    scenario = write_scenario(tmp_path, [
        {"direction": "incoming", "at": 0.5, "rings": 1, "audio": caller_after_notice(tmp_path, speech),
         "talk": NOTICE_S + 3.0}], ring_on_s=0.8, ring_off_s=1.2)
    callrec("simulate", str(scenario), "--config", str(config), "--data", str(tmp_path / "data"))
    [call] = calls_json(tmp_path / "data")
    notice_s = len(decode_to_pcm(demo_path("notice-en.wav"), RATE)) / 2 / RATE
    notice_end = iso_seconds(call["notice_played_at"]) + notice_s
    assert notice_end - 0.05 <= iso_seconds(call["recording_started_at"]) < notice_end + 0.2
    heard = recording(tmp_path / "data", call)
    said = np.frombuffer(decode_to_pcm(speech, RATE), dtype="<i2") / 32768.0
    words_at, likeness = find(said[:int(1.5 * RATE)], heard)
    assert likeness > 0.8 and words_at < 0.3       # the conversation, from its start, and nothing before
    assert call["duration_s"] < 3.0 + 0.3 + 0.9


@pytest.fixture
def live_line(tmp_path, monkeypatch):
    """The recorder in this process on line t1 (its audio: line hiss through a real FIFO-fed
    capture PCM), its pins on a MockFactory the test drives. Yields a function that builds the
    Recorder from line settings; the test starts it."""
    from gpiozero.pins.mock import MockFactory

    from appliance.config import load_config
    from appliance.recorder import Recorder
    from appliance.simulate import simulated

    data = tmp_path / "data"
    alsa, feeders = simulated_cards(data, ["t1"])
    monkeypatch.setenv("ALSA_CONFIG_PATH", alsa)
    factory = MockFactory()
    recorders = []

    def build(recorder=None, **line):
        config = simulated(load_config(write_config(tmp_path, recorder=recorder, line=line)), data)
        recorders.append(Recorder(config, pin_factory=factory))
        return recorders[-1], factory

    yield build
    for recorder in recorders:
        recorder.stop()
    stop(feeders)
    factory.reset()


def wait_idle(recorder, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not recorder.idle() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_handset_already_off_hook_when_the_recorder_starts_is_recorded_to_the_hang_up(live_line):
    recorder, factory = live_line()
    hook = factory.pin(17)
    hook.drive_low()                     # off-hook (active low) before the recorder starts
    # On a Pi the pin is simply low when the recorder opens it: no edge. The mock pulls the
    # pin up when the input is created, so the edge it then reports is dropped here.
    edges = recorder.lines[0].inputs.edges
    while not edges.empty():
        edges.get()
    recorder.start()
    time.sleep(1.5)
    hook.drive_high()
    wait_idle(recorder)
    [call] = recorder.catalogue.calls()
    assert call["state"] == "complete" and call["direction"] == "unknown"
    assert call["notice_played_at"] is None
    assert 1.5 + 0.6 < call["duration_s"] < 1.5 + 0.7 + 0.3


def test_the_recording_led_follows_the_call_and_a_pause_left_on_resumes_by_itself(live_line):
    recorder, factory = live_line(recording_led_pin=12, pause_button_pin=5, pause_max_s=1.0)
    hook, led, pause = factory.pin(17), factory.pin(12), factory.pin(5)
    recorder.start()
    time.sleep(0.3)
    assert led.state is False
    hook.drive_low()                     # off-hook
    time.sleep(0.5)
    assert led.state is True
    pause.drive_low()                    # press the pause button…
    time.sleep(0.1)
    pause.drive_high()
    time.sleep(0.3)
    assert led.state is False            # …the LED says nothing is being recorded
    time.sleep(1.2)
    assert led.state is True             # the pause was left on: it resumed by itself
    hook.drive_high()
    wait_idle(recorder)
    assert led.state is False
    [call] = recorder.catalogue.calls()
    [(start, end, reason)] = recorder.catalogue.pauses(call["id"])
    assert 0.9 < end - start < 1.3 and reason == "button"


def test_two_lines_are_recorded_at_once_each_into_its_own_call(tmp_path):
    config = write_config(tmp_path, line={"outgoing": "off"})     # each line's own tone only, no notice
    config.write_text(config.read_text() + f'''
[[line]]
name = "t2"
hook_pin = 22
hook_active = "high"
capture = "cap2"
playback = "play2"
notice = "{demo_path('notice-en.wav')}"
''')
    low = write_wav(tmp_path / "low.wav", tone(500, 2.0, 0.4))
    high = write_wav(tmp_path / "high.wav", tone(900, 2.0, 0.4))
    scenario = write_scenario(tmp_path, [
        {"direction": "outgoing", "at": 0.5, "audio": str(low), "line": "t1"},
        {"direction": "outgoing", "at": 1.0, "audio": str(high), "line": "t2"},
    ])
    callrec("simulate", str(scenario), "--config", str(config), "--data", str(tmp_path / "data"))
    calls = {call["line"]: call for call in calls_json(tmp_path / "data")}
    assert sorted(calls) == ["t1", "t2"]
    # t2 has no ring detector: off-hook alone cannot tell an outgoing call from an answered one.
    for line, direction, mine, other in (("t1", "outgoing", 500, 900), ("t2", "unknown", 900, 500)):
        call = calls[line]
        assert call["direction"] == direction
        at = int((iso_seconds(call["started_at"]) - iso_seconds(call["recording_started_at"]) + 0.5) * RATE)
        heard = recording(tmp_path / "data", call)[at:at + RATE]
        assert tone_level(heard, mine) > 0.3 and tone_level(heard, other) < 0.02


def test_a_caller_who_presses_the_opt_out_key_leaves_no_audio_anywhere(tmp_path, speech):
    config = write_config(tmp_path, line={"optout_digit": "9"})
    # The caller hears the notice, presses 9, and the conversation (a 700 Hz tone, to look for it
    # afterwards) goes on unrecorded.
    talk = write_wav(tmp_path / "talk.wav", np.concatenate([np.zeros(int((NOTICE_S + 1.0) * RATE)),
                                                            tone(700, 4.0, 0.3)]))
    dialled = write_wav(tmp_path / "dialled.wav", np.zeros(3 * RATE))
    scenario = write_scenario(tmp_path, [
        {"direction": "incoming", "at": 0.5, "rings": 1, "audio": str(talk),
         "dtmf": [{"at": NOTICE_S + 0.5, "digits": "9"}]},
        {"direction": "outgoing", "at": 12.0, "audio": str(dialled),
         "dtmf": [{"at": 0.3, "digits": "0475123456"}]},
    ], ring_on_s=0.8, ring_off_s=1.2)
    data = tmp_path / "data"
    callrec("simulate", str(scenario), "--config", str(config), "--data", str(data))
    declined, outgoing = calls_json(data)
    assert declined["state"] == "discarded" and declined["discard_reason"] == "declined"
    assert declined["file"] is None and declined["number"] is None and declined["recording_started_at"] is None
    assert [p.name for p in (data / "archive").rglob("*.opus")] == [Path(outgoing["file"]).name]
    assert not list((data / "spool").iterdir())
    # The next call began 1.7 s after the hang-up: its pre-roll holds nothing of the declined call.
    assert tone_level(recording(data, outgoing)[:int(1.5 * RATE)], 700) < 0.01
    assert outgoing["number"] == "0475123456"
    catalogue = Catalogue(data)
    assert catalogue.digits(declined["id"]) == []
    offsets = [offset for offset, _ in catalogue.digits(outgoing["id"])]
    preroll = iso_seconds(outgoing["started_at"]) - iso_seconds(outgoing["recording_started_at"])
    assert abs(offsets[0] - (preroll + 0.3)) < 0.05 and len(offsets) == 10


def test_the_pause_button_writes_silence_of_the_right_length_and_the_agreement_button_marks_the_call(tmp_path):
    config = write_config(tmp_path, line={"pause_button_pin": 5, "agreement_button_pin": 6})
    audio = write_wav(tmp_path / "talk.wav", tone(1000, 6.0, 0.3))
    scenario = write_scenario(tmp_path, [
        {"direction": "outgoing", "at": 0.5, "audio": str(audio),
         "pause": [{"at": 1.5, "length": 2.0}], "agreement_at": [4.5]}])
    data = tmp_path / "data"
    callrec("simulate", str(scenario), "--config", str(config), "--data", str(data))
    [call] = calls_json(data)
    assert call["purpose"] == "agreement"
    [(start, end, reason)] = Catalogue(data).pauses(call["id"])
    preroll = iso_seconds(call["started_at"]) - iso_seconds(call["recording_started_at"])
    assert abs(start - (preroll + 1.5)) < 0.1 and abs(end - start - 2.0) < 0.1
    heard = recording(data, call)
    level = lambda a, b: tone_level(heard[int(a * RATE):int(b * RATE)], 1000)
    assert level(start - 0.6, start - 0.1) > 0.2          # the conversation before the pause
    assert level(start + 0.1, end - 0.1) < 0.005          # silence while paused
    assert level(end + 0.1, end + 0.6) > 0.2              # and after it
    assert abs(call["duration_s"] - (preroll + 6.0 + 0.7)) < 0.3   # the time line stays true


def blinks(pin, long_dark: float) -> list[int]:
    """The number of blinks in each burst the LED showed. The mock pin's history gives for each
    change the time since the one before, so an `on` after a long dark spell starts a burst."""
    bursts, count = [], 0
    for change in pin.states[1:]:
        if change.state:
            if change.timestamp > long_dark and count:
                bursts.append(count)
                count = 0
            count += 1
    return bursts + ([count] if count else [])


def test_the_fault_led_blinks_the_number_of_the_most_serious_fault(monkeypatch):
    from gpiozero.pins.mock import MockFactory

    from appliance import faultled

    monkeypatch.setattr(faultled, "BLINK_S", 0.1)
    monkeypatch.setattr(faultled, "PAUSE_S", 1.0)
    factory = MockFactory()
    led = faultled.FaultLed(13, lambda: {faultled.STORAGE_ALARM, faultled.MODEM_LOST}, factory)
    led.start()
    time.sleep(5.0)
    led.close()
    shown = blinks(factory.pin(13), long_dark=0.6)[:-1]     # the last burst may be cut short
    assert len(shown) >= 2 and all(burst == 2 for burst in shown)
    factory.reset()


def test_a_storage_alarm_is_a_fault_and_the_fault_led_goes_dark_when_it_clears(live_line):
    from appliance.faultled import PAUSE_S, STORAGE_ALARM

    recorder, factory = live_line(recorder={"fault_led_pin": 13})
    recorder.store.settings = recorder.store.settings.model_copy(update={"min_free_mb": 10**9})
    recorder.start()                      # the first cleaner pass raises the alarm
    assert wait_for(lambda: recorder.faults() == {STORAGE_ALARM}, 10)
    recorder.store.settings = recorder.store.settings.model_copy(update={"min_free_mb": 0, "min_free_hours": 0})
    # The recorder's own cleaner clears it: a pass of the test's own could race one of the cleaner's
    # begun with the settings before, which would raise the alarm again after it.
    recorder.cleaner.wake()
    assert wait_for(lambda: recorder.faults() == set(), 10)
    time.sleep(PAUSE_S + 1.0)
    assert recorder.faults() == set() and factory.pin(13).state is False


def test_a_modem_that_disappears_mid_call_does_not_stop_the_recording(live_line):
    from appliance.faultled import MODEM_LOST
    from appliance.simulate import SimModem

    modem = SimModem([], time.monotonic())
    modem.start()
    recorder, factory = live_line(modem=modem.path)
    recorder.start()
    assert wait_for(lambda: recorder.lines[0].modem.connected.is_set(), 5)
    hook = factory.pin(17)
    hook.drive_low()                      # off-hook
    time.sleep(0.5)
    modem.close()                         # unplugged mid-call
    assert wait_for(lambda: MODEM_LOST in recorder.faults(), 5)
    time.sleep(1.0)
    hook.drive_high()
    wait_idle(recorder)
    [call] = recorder.catalogue.calls()
    assert call["state"] == "complete" and 1.5 + 0.6 < call["duration_s"] < 1.5 + 0.7 + 2.0 + 0.3


def test_caller_id_sent_as_dtmf_before_the_first_ring_names_the_call(tmp_path):
    config = write_config(tmp_path, line={"caller_id": "dtmf"})
    scenario = write_scenario(tmp_path, [
        {"direction": "incoming", "at": 3.0, "rings": 1, "caller_id": "0201234567", "talk": 1.5}],
        ring_on_s=0.8, ring_off_s=1.2)
    callrec("simulate", str(scenario), "--config", str(config), "--data", str(tmp_path / "data"))
    [call] = calls_json(tmp_path / "data")
    assert call["direction"] == "incoming" and call["number"] == "0201234567"


def test_a_finished_call_is_named_from_the_contacts_and_sent_signed_to_the_crm(tmp_path):
    from appliance.webhook import verify
    from test_webhook import Receiver

    (tmp_path / "secret").write_text("s3cret\n")
    (tmp_path / "contacts.csv").write_text("number;name\n02 555 12 34;Bakery Anna\n", encoding="utf-8-sig")
    with Receiver() as crm:
        config = write_config(tmp_path)
        config.write_text(config.read_text() + f'\n[webhook]\nurl = "{crm.url}"\nsecret_file = "secret"\n')
        data = tmp_path / "data"
        scenario = write_scenario(tmp_path, [
            {"direction": "incoming", "at": 0.5, "rings": 1, "caller_id": "+3225551234", "talk": 1.5}],
            ring_on_s=0.8, ring_off_s=1.2)
        empty = tmp_path / "empty.toml"
        empty.write_text("")
        callrec("simulate", str(empty), "--config", str(config), "--data", str(data))   # makes the store
        assert "1 added" in callrec("contacts", "import", str(tmp_path / "contacts.csv"), "--data", str(data)).stdout
        callrec("simulate", str(scenario), "--config", str(config), "--data", str(data))
    [call] = calls_json(data)
    assert call["contact_name"] == "Bakery Anna"
    [request] = crm.requests
    body, headers = request["body"], request["headers"]
    assert verify("s3cret", headers["X-Callrec-Timestamp"], body, headers["X-Callrec-Signature"])
    event = json.loads(body)
    assert event["event"] == "call.ended" and event["id"] == call["id"] and event["contact_name"] == "Bakery Anna"


def test_a_dtmf_code_pauses_and_resumes_and_the_keys_typed_meanwhile_are_not_kept(tmp_path):
    config = write_config(tmp_path, line={"pause_code": "*7", "notice_incoming": False})
    scenario = write_scenario(tmp_path, [
        {"direction": "incoming", "at": 0.5, "rings": 1, "talk": 7.0,
         "dtmf": [{"at": 1.0, "digits": "*7"}, {"at": 2.5, "digits": "4111"},
                  {"at": 4.5, "digits": "*7"}, {"at": 6.0, "digits": "5"}]}],
        ring_on_s=0.8, ring_off_s=1.2)
    data = tmp_path / "data"
    callrec("simulate", str(scenario), "--config", str(config), "--data", str(data))
    [call] = calls_json(data)
    catalogue = Catalogue(data)
    [(start, end, reason)] = catalogue.pauses(call["id"])
    preroll = iso_seconds(call["answered_at"]) - iso_seconds(call["recording_started_at"])
    assert reason == "dtmf"
    assert preroll + 1.3 < start < preroll + 1.6 and preroll + 4.8 < end < preroll + 5.1
    assert "".join(key for _, key in catalogue.digits(call["id"])) == "*5"   # no card digits


def test_the_live_state_shows_each_line_idle_then_in_call_with_its_input_level_and_goes_with_the_recorder(live_line):
    from appliance.live import read_live, recorder_pid

    recorder, factory = live_line()
    folder = recorder.config.recorder.live_dir
    recorder.start()
    assert wait_for(lambda: read_live(folder) is not None, 3)
    [line] = read_live(folder)["lines"]
    assert line["name"] == "t1" and line["state"] == "idle" and line["hook"] == "on"
    assert recorder_pid(folder) == os.getpid()
    factory.pin(17).drive_low()          # off-hook
    assert wait_for(lambda: read_live(folder)["lines"][0]["state"] == "in_call", 3)
    [line] = read_live(folder)["lines"]
    [call] = recorder.catalogue.calls()
    assert line["call_id"] == call["id"] and line["call_started_at"] == call["started_at"]
    assert line["capture_connected"] is True
    assert line["level_dbfs"] is not None and line["level_dbfs"] < -60     # the silent test line
    factory.pin(17).drive_high()
    wait_idle(recorder)
    recorder.stop()
    assert read_live(folder) is None and recorder_pid(folder) is None


def test_a_reloaded_configuration_applies_purposes_limits_and_notices_at_once_and_wiring_at_restart(live_line, tmp_path):
    from appliance.config import load_config
    from appliance.simulate import simulated
    from conftest import write_config, write_wav

    recorder, factory = live_line()
    recorder.start()
    notice = write_wav(tmp_path / "notice-fr.wav", tone(700, 1.0))
    (tmp_path / "changed").mkdir()
    changed = write_config(tmp_path / "changed", recorder={"preroll_s": 2.0},
                           line={"purpose": "agreement", "notice": str(notice), "hook_pin": 22})
    config = simulated(load_config(changed), recorder.config.recorder.data_dir)
    config = config.model_copy(update={"store": config.store.model_copy(update={"min_free_mb": 7})})
    pending = recorder.reload(config)
    assert pending == ["line t1: its pins, sound card or modem"]
    line = recorder.lines[0]
    assert line.line.purpose == "agreement" and line.line.hook_pin == 17      # wiring waits for a restart
    assert line.notice.path == notice and recorder.store.settings.min_free_mb == 7
    factory.pin(17).drive_low()          # a call on the old pin, under the new purpose
    time.sleep(0.5)
    factory.pin(17).drive_high()
    wait_idle(recorder)
    [call] = recorder.catalogue.calls()
    assert call["purpose"] == "agreement"


HOLD_S = 8.0


def test_a_catalogue_locked_by_another_process_delays_the_row_never_the_audio(live_line, tmp_path):
    """Another process holds the catalogue's write lock for 8 s around an off-hook (what a long
    web export or `verify` did): the call is recorded from its pre-roll to its end, and its row
    catches up, complete, once the lock is gone; a process reading meanwhile sees a snapshot."""
    recorder, factory = live_line()
    hook = factory.pin(17)
    recorder.start()
    time.sleep(2.5)                     # the pre-roll fills
    data = recorder.catalogue.path.parent
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time\n"
        f"db = sqlite3.connect({str(data / 'catalogue.db')!r}, isolation_level=None)\n"
        "db.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        f"time.sleep({HOLD_S})\n"
        "db.execute('COMMIT')\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        locked_at = time.monotonic()
        hook.drive_low()                # off-hook while the catalogue is locked
        off_hook = time.time()
        time.sleep(3.0)
        hook.drive_high()               # …and on-hook, still locked
        time.sleep(1.0)
        assert time.monotonic() - locked_at < HOLD_S
        assert recorder.catalogue.calls() == []       # no row yet…
        spools = list((data / "spool").iterdir())
        assert len(spools) == 1 and spools[0].stat().st_size > 44 + 2 * RATE * 2   # …but the audio is on disk
    finally:
        holder.wait(timeout=HOLD_S + 5)
    wait_idle(recorder, timeout=15)
    [call] = recorder.catalogue.calls()
    assert call["state"] == "complete" and call["file"]
    assert abs(iso_seconds(call["started_at"]) - off_hook) < 0.3
    # Two seconds of pre-roll, the three seconds off-hook, the flash window after the hang-up.
    assert 2.0 + 3.0 + 0.5 < call["duration_s"] < 2.0 + 3.0 + 1.0
    assert abs(iso_seconds(call["started_at"]) - iso_seconds(call["recording_started_at"]) - 2.0) < 0.1
    assert not list((data / "spool").iterdir())


DIALLED_AT, VOICE_AT = 1.2, 11.0


def dialling_then_answer(folder: Path, speech: Path, name: str, ringback: bool) -> str:
    """An outgoing call's line audio from the off-hook: dial tone (425 Hz), the keys (added by the
    scenario at DIALLED_AT), silence, with `ringback` two bursts of Belgian ringback (425 Hz, 1 s
    on, 3 s off), then the called party's "hello" at VOICE_AT (quiet after it: the notice, the
    beeps are what the line carries then)."""
    said = np.frombuffer(decode_to_pcm(speech, RATE), dtype="<i2") / 32768.0
    audio = np.zeros(int(20 * RATE))
    audio[:RATE] = tone(425, 1.0, 0.3)
    for burst in (4.5, 8.5) if ringback else ():
        audio[int(burst * RATE):int((burst + 1) * RATE)] = tone(425, 1.0, 0.3)
    hello = said[:int(0.9 * RATE)]
    audio[int(VOICE_AT * RATE):int(VOICE_AT * RATE) + len(hello)] = hello
    return str(write_wav(folder / name, audio))


def beep_starts(samples: np.ndarray) -> list[float]:
    """Where a 1400 Hz beep starts in `samples` (seconds), found in 50 ms steps."""
    step = int(0.05 * RATE)
    loud = [tone_level(samples[at:at + step], 1400) > 0.05 for at in range(0, len(samples) - step, step)]
    return [n * 0.05 for n, on in enumerate(loud) if on and (n == 0 or not loud[n - 1])]


@pytest.fixture(scope="module")
def outgoing_run(tmp_path_factory, speech):
    """Three lines dial out at once: t1 (outgoing = "announce") rings back twice before the called
    party speaks; t2 (outgoing = "beep", every 5 s) is answered without ringback; t3 is t1 with
    record_from = "notice_end"."""
    folder = tmp_path_factory.mktemp("outgoing")
    config = write_config(folder)
    config.write_text(config.read_text() + f'''
[[line]]
name = "t2"
hook_pin = 22
hook_active = "low"
ring_pin = 23
capture = "cap2"
playback = "play2"
notice = "{demo_path('notice-en.wav')}"
outgoing = "beep"
beep_interval_s = 5.0

[[line]]
name = "t3"
hook_pin = 24
hook_active = "low"
ring_pin = 25
capture = "cap3"
playback = "play3"
notice = "{demo_path('notice-en.wav')}"
record_from = "notice_end"
''')
    scenario = write_scenario(folder, [
        {"direction": "outgoing", "at": 0.5, "line": "t1", "talk": 17.0,
         "audio": dialling_then_answer(folder, speech, "t1.wav", ringback=True),
         "dtmf": [{"at": DIALLED_AT, "digits": "0475123456"}]},
        {"direction": "outgoing", "at": 0.5, "line": "t2", "talk": 17.0,
         "audio": dialling_then_answer(folder, speech, "t2.wav", ringback=False),
         "dtmf": [{"at": DIALLED_AT, "digits": "025551234"}]},
        {"direction": "outgoing", "at": 0.5, "line": "t3", "talk": 17.0,
         "audio": dialling_then_answer(folder, speech, "t3.wav", ringback=True),
         "dtmf": [{"at": DIALLED_AT, "digits": "065432100"}]},
    ])
    data = folder / "data"
    callrec("simulate", str(scenario), "--config", str(config), "--data", str(data))
    return data, {call["line"]: call for call in calls_json(data)}


def test_announce_plays_the_notice_when_the_called_party_answers_not_into_the_ringback(outgoing_run):
    data, calls = outgoing_run
    call = calls["t1"]
    assert (call["direction"], call["number"], call["state"]) == ("outgoing", "0475123456", "complete")
    off_hook = iso_seconds(call["started_at"])
    answered = iso_seconds(call["answered_at"]) - off_hook
    notice = iso_seconds(call["notice_played_at"]) - off_hook
    assert VOICE_AT - 0.3 < answered < VOICE_AT + 0.3        # the voice's onset, after two bursts of ringback
    assert answered <= notice < VOICE_AT + 1.2                  # within a second of "hello", not before
    # In the recording (the line carries what is played back to the tap): nothing but the line
    # between and after the ringback bursts; the notice once the called party spoke.
    heard = recording(data, call)
    at = off_hook - iso_seconds(call["recording_started_at"])
    for lo, hi in ((5.6, 8.4), (9.6, VOICE_AT - 0.1)):
        assert np.sqrt(np.mean(heard[int((at + lo) * RATE):int((at + hi) * RATE)] ** 2)) < 0.01
    spoken = np.frombuffer(decode_to_pcm(demo_path("notice-en.wav"), RATE), dtype="<i2") / 32768.0
    notice_at, likeness = find(spoken, heard[int((at + VOICE_AT) * RATE):])
    assert likeness > 0.8 and abs(VOICE_AT + notice_at - notice) < 0.3


def test_beep_sounds_into_the_line_at_its_interval_from_the_answer(outgoing_run):
    data, calls = outgoing_run
    call = calls["t2"]
    assert (call["direction"], call["state"], call["notice_played_at"]) == ("outgoing", "complete", None)
    heard = recording(data, call)
    off_hook = iso_seconds(call["started_at"]) - iso_seconds(call["recording_started_at"])
    starts = [at - off_hook for at in beep_starts(heard)]
    # From the answer (the voice at VOICE_AT, no ringback) every 5 s to the hang-up at 17 s.
    assert len(starts) == 2 and VOICE_AT < starts[0] < VOICE_AT + 1.2
    assert abs(starts[1] - starts[0] - 5.0) < 0.15
    # A beep lasts 0.3 s at -18 dBFS (0.126 of full scale).
    first = heard[int((starts[0] + off_hook + 0.05) * RATE):int((starts[0] + off_hook + 0.25) * RATE)]
    assert 0.09 < tone_level(first, 1400) < 0.16
    assert tone_level(heard[int((starts[0] + off_hook + 0.45) * RATE):int((starts[0] + off_hook + 0.9) * RATE)], 1400) < 0.01


def test_with_record_from_notice_end_the_dialling_is_heard_but_nothing_before_the_notice_is_kept(outgoing_run):
    data, calls = outgoing_run
    call = calls["t3"]
    assert (call["direction"], call["number"], call["state"]) == ("outgoing", "065432100", "complete")
    notice_end = iso_seconds(call["notice_played_at"]) + len(decode_to_pcm(demo_path("notice-en.wav"), RATE)) / 2 / RATE
    assert notice_end - 0.05 <= iso_seconds(call["recording_started_at"]) < notice_end + 0.2
    assert iso_seconds(call["notice_played_at"]) - iso_seconds(call["started_at"]) > VOICE_AT
    heard = recording(data, call)
    assert tone_level(heard, 425) < 0.005           # neither dial tone nor ringback
    # The keys are placed where the recording starts (the catalogue keeps no audio before it).
    assert [offset for offset, _ in Catalogue(data).digits(call["id"])] == [0.0] * 9
