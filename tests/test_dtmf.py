"""In-band DTMF detection: every key ITU-T Q.24 says a receiver must take is found, in combination
(level, twist, frequency offset and duration together), what it must refuse is not, and speech and
music on hold never make a key. `bench/dtmf` runs the whole sweep and the hours of talk-off."""

import difflib
import importlib.util
from importlib.machinery import SourceFileLoader
from pathlib import Path

import numpy as np
import pytest

from appliance.dtmf import ClipDecoder, DtmfDetector
from conftest import RATE

ALL_KEYS = "0123456789*#ABCD"


def _bench():
    """bench/dtmf, for its tone, speech and music makers (one corpus for the tests and the bench)."""
    loader = SourceFileLoader("bench_dtmf", str(Path(__file__).resolve().parent.parent / "bench" / "dtmf"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


bench = _bench()


def detect(samples: np.ndarray) -> str:
    """The keys the detector finds, fed in 20 ms periods as capture delivers them."""
    return "".join(digit.key for digit in DtmfDetector(RATE).scan(bench.pcm(samples)))


@pytest.fixture(scope="module")
def talk() -> np.ndarray:
    """Two minutes of espeak-ng speech in the four languages, many voices, unit RMS."""
    return bench.speech(120, seed=11)


@pytest.fixture(scope="module")
def hold_music() -> np.ndarray:
    """Two minutes of generated music on hold, unit RMS."""
    return bench.music(120, seed=11)


# Corners of Q.24's must-detect region: (low, high) tone levels in dBm0, the relative offset of each
# tone, tones and pauses of 40 ms. Twist: high group 8 dB under the low ("normal") or 4 dB over it.
@pytest.mark.parametrize("low, high, low_off, high_off", [
    (-22, -30, 0.015, -0.015),      # weakest tone at the floor, normal twist 8 dB
    (-22, -30, -0.015, 0.015),
    (-30, -26, -0.015, -0.015),     # reverse twist 4 dB at the floor
    (-4, -12, 0.015, 0.015),        # the loudest, normal twist 8 dB
    (-8, -4, -0.015, 0.015),        # the loudest, reverse twist 4 dB
    (-30, -30, 0.015, 0.015),
])
def test_every_key_in_the_must_detect_region_is_found_at_40_ms(low, high, low_off, high_off):
    assert detect(bench.dialled(ALL_KEYS, 0.04, 0.04, low, high, low_off, high_off)) == ALL_KEYS


def test_a_number_dialled_with_quiet_high_tones_off_frequency_is_whole():
    # 50 ms tones, the high tone 6 dB under the low one, both 1.2 % off: digits were lost.
    line = bench.dialled("0471234567", 0.05, 0.05, -10, -16, 0.012, 0.012)
    assert detect(line) == "0471234567"


@pytest.mark.parametrize("seconds, dbm0", [(0.02, -4), (0.02, -20), (0.015, -10)])
def test_tones_of_20_ms_are_refused(seconds, dbm0):
    assert detect(bench.dialled(ALL_KEYS, seconds, 0.06, dbm0, dbm0)) == ""


@pytest.mark.parametrize("low_off, high_off", [(0.035, 0), (-0.035, 0), (0, 0.035), (0, -0.035), (0.05, 0.05)])
def test_tones_3_5_percent_off_are_refused(low_off, high_off):
    assert detect(bench.dialled(ALL_KEYS, 0.1, 0.1, -10, -10, low_off, high_off)) == ""


@pytest.mark.parametrize("dbm0, found", [(-30, True), (-40, False)])
def test_the_level_floor(dbm0, found):
    assert (detect(bench.dialled("159", 0.08, 0.08, dbm0, dbm0)) == "159") is found


def test_twist_far_beyond_the_limits_is_refused():
    assert detect(bench.dialled("8", 0.1, 0.1, -10, -25, 0, 0)) == ""
    assert detect(bench.dialled("8", 0.1, 0.1, -25, -10, 0, 0)) == ""


def test_a_held_key_is_one_digit_and_repeated_keys_are_each_counted():
    assert detect(bench.dialled("7", 1.0, 0.05, -15, -15)) == "7"
    assert detect(bench.dialled("777", 0.04, 0.04, -15, -15)) == "777"


def test_a_break_of_10_ms_does_not_split_a_key():
    tone = bench.tone("5", 0.06, -15, -15)
    line = np.concatenate([np.zeros(2000), tone, np.zeros(80), tone, np.zeros(2000)])
    assert detect(line) == "5"


def test_digits_are_placed_where_they_were_keyed():
    line = bench.dialled("42", 0.05, 0.05, -15, -15)
    digits = DtmfDetector(RATE).scan(bench.pcm(line))
    starts = [0.3 * RATE, (0.3 + 0.1) * RATE]
    assert [d.key for d in digits] == ["4", "2"]
    assert all(abs(d.start - s) <= 0.006 * RATE and abs(d.length - 0.05 * RATE) <= 0.012 * RATE
               for d, s in zip(digits, starts))


def test_no_key_in_speech(talk):
    assert detect(talk * 10 ** (-20 / 20)) == ""


def test_no_key_in_music_on_hold(hold_music):
    assert detect(hold_music * 10 ** (-20 / 20)) == ""


def test_digits_are_found_while_someone_talks(talk):
    keys = "0123456789*#0918273645"
    line = talk[:int((len(keys) * 2.5 + 2) * RATE)] * 10 ** (-29 / 20)  # 6 dB under the tone pair
    for n, key in enumerate(keys):
        at = int((1.0 + n * 2.5) * RATE)
        tone = bench.tone(key, 0.08, -20, -20)
        line[at:at + len(tone)] += tone
    found = detect(line)
    matched = sum(b.size for b in difflib.SequenceMatcher(None, found, keys, autojunk=False).get_matching_blocks())
    assert matched == len(found)          # no digit that was not sent
    assert matched >= 0.9 * len(keys)


def test_dtmf_caller_id_messages():
    decoder = ClipDecoder()
    assert [decoder.key(k) for k in "7A0201234567"] == [None] * 12      # stray keys before A are ignored
    assert decoder.key("C") == ("0201234567", None)
    assert [decoder.key(k) for k in "B10"] == [None] * 3 and decoder.key("C") == (None, "private")
    assert [decoder.key(k) for k in "B00"] == [None] * 3 and decoder.key("C") == (None, "unavailable")
