"""In-band DTMF detection: real keypad tones found at realistic levels, speech never taken for digits."""

import difflib
import subprocess

import numpy as np
import pytest

from appliance.codec import decode_to_pcm
from appliance.dtmf import DtmfDetector, frequencies
from appliance.scenario import dtmf_tone
from conftest import RATE

DBM0_TO_DBFS = -3.14        # a 0 dBm0 sine is 3.14 dB under full scale (G.711 A-law)
SENTENCES = {
    "en": "Good morning, I would like to order two dozen rolls and a birthday cake for Saturday. "
          "Could you also deliver twelve bottles of sparkling water and three kilos of oranges?",
    "fr": "Bonjour, je voudrais commander deux douzaines de croissants pour samedi matin, et aussi "
          "un gâteau au chocolat pour douze personnes. Merci beaucoup, au revoir.",
    "nl": "Goedemorgen, ik wil graag twee broden en zes krentenbollen bestellen voor zaterdag. "
          "Kunt u ook een taart bezorgen? Dank u wel en tot ziens.",
    "pl": "Dzień dobry, chciałbym zamówić dwa chleby i tort urodzinowy na sobotę. Czy mogą państwo "
          "dostarczyć zamówienie do domu? Dziękuję bardzo.",
}


def key_tone(key: str, seconds: float, dbm0: float, twist_db: float = 0.0) -> np.ndarray:
    """A keypad tone, each frequency at `dbm0` (the column `twist_db` lower), full scale 1.0."""
    if twist_db == 0:
        return dtmf_tone(key, RATE, seconds, 10 ** ((dbm0 + DBM0_TO_DBFS) / 20))
    row, column = frequencies(key)
    amplitude = 10 ** ((dbm0 + DBM0_TO_DBFS) / 20)
    t = np.arange(int(seconds * RATE)) / RATE
    return amplitude * (np.sin(2 * np.pi * row * t) + 10 ** (-twist_db / 20) * np.sin(2 * np.pi * column * t))


def detect(samples: np.ndarray) -> str:
    """The keys the detector finds, fed in 20 ms periods as capture delivers them."""
    pcm = (np.clip(samples, -1, 32767 / 32768) * 32768).astype("<i2").tobytes()
    return "".join(digit.key for digit in DtmfDetector(RATE).scan(pcm))


def keyed(keys: str, seconds: float, dbm0: float, pause: float = 0.06, **kw) -> np.ndarray:
    hiss = np.random.default_rng(3).normal(0, 0.001, int(0.2 * RATE))
    parts = [hiss]
    for key in keys:
        parts += [key_tone(key, seconds, dbm0, **kw), np.zeros(int(pause * RATE))]
    return np.concatenate(parts + [hiss])


@pytest.fixture(scope="module")
def speech_minute(tmp_path_factory) -> np.ndarray:
    """About a minute of espeak-ng speech in the shops' languages, at a talking level (-21 dBFS)."""
    folder = tmp_path_factory.mktemp("speech")
    parts = []
    for lang, text in SENTENCES.items():
        wav = folder / f"{lang}.wav"
        subprocess.run(["espeak-ng", "-v", lang, "-w", str(wav), text], check=True)
        parts.append(np.frombuffer(decode_to_pcm(wav, RATE), dtype="<i2") / 32768.0)
    speech = np.concatenate(parts)
    speech = np.tile(speech, int(np.ceil(60 * RATE / len(speech))))[:60 * RATE]
    return speech * (10 ** (-21 / 20) / np.sqrt(np.mean(speech ** 2)))


def test_every_key_is_found_at_minus_20_dbm():
    assert detect(keyed("0123456789*#ABCD", 0.06, -20)) == "0123456789*#ABCD"


@pytest.mark.parametrize("seconds, found", [(0.04, True), (0.1, True), (0.015, False)])
def test_tones_of_40_ms_are_accepted_and_clicks_are_not(seconds, found):
    assert (detect(keyed("5937", seconds, -20)) == "5937") is found


@pytest.mark.parametrize("dbm0, found", [(-5, True), (-25, True), (-45, False)])
def test_the_level_range(dbm0, found):
    assert (detect(keyed("159", 0.08, dbm0)) == "159") is found


def test_twist_beyond_the_limit_is_refused():
    assert detect(keyed("8", 0.1, -15, twist_db=4)) == "8"
    assert detect(keyed("8", 0.1, -15, twist_db=12)) == ""


def test_a_held_key_is_one_digit_and_repeated_keys_are_each_counted():
    assert detect(keyed("7", 1.0, -15)) == "7"
    assert detect(keyed("777", 0.07, -15, pause=0.05)) == "777"


def test_no_false_digit_in_a_minute_of_speech(speech_minute):
    assert detect(speech_minute) == ""


def test_digits_at_minus_20_dbm_are_found_while_someone_talks(speech_minute):
    line = speech_minute / 2              # the other side talks all the way through, 6 dB under
    keys = "0123456789*#0918273645"
    for n, key in enumerate(keys):
        at = int((1.0 + n * 2.5) * RATE)
        tone = key_tone(key, 0.08, -20)
        line[at:at + len(tone)] += tone
    found = detect(line)
    matched = sum(block.size for block in difflib.SequenceMatcher(None, found, keys).get_matching_blocks())
    assert matched == len(found)          # no digit that was not sent
    assert matched >= 0.9 * len(keys)


def test_dtmf_caller_id_messages():
    from appliance.dtmf import ClipDecoder

    decoder = ClipDecoder()
    assert [decoder.key(k) for k in "7A0201234567"] == [None] * 12      # stray keys before A are ignored
    assert decoder.key("C") == ("0201234567", None)
    assert [decoder.key(k) for k in "B10"] == [None] * 3 and decoder.key("C") == (None, "private")
    assert [decoder.key(k) for k in "B00"] == [None] * 3 and decoder.key("C") == (None, "unavailable")
