"""The answer of an analog line's outgoing call, heard in its audio: a voice that sets in after
the ringback (or without any) is the answer; dial tone, ringback of any European cadence and the
keys being dialled never are; a ringback that stops after its cadence is an answer too."""

import numpy as np
import pytest

from appliance.analog.answer import AnswerDetector
from appliance.codec import decode_to_pcm
from appliance.scenario import LINE_NOISE_LEVEL, dtmf_tone
from conftest import RATE, tone


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE))


def ringback(hz: float, on: float, off: float, bursts: int) -> np.ndarray:
    """`bursts` of a ringback tone with its cadence."""
    return np.concatenate([np.concatenate([tone(hz, on, 0.3), silence(off)]) for _ in range(bursts)])


def dialled(keys: str, held: float = 0.1) -> np.ndarray:
    return np.concatenate([np.concatenate([dtmf_tone(k, RATE, held), silence(0.1)]) for k in keys])


def answers(parts: list[np.ndarray]) -> list[tuple[float, str]]:
    """What the detector reports on the line audio `parts`, fed in 40 ms periods with line hiss."""
    audio = np.concatenate(parts)
    audio = audio + np.random.default_rng(0).normal(0, LINE_NOISE_LEVEL / 32768, len(audio))
    pcm = (np.clip(audio, -1, 32767 / 32768) * 32768).astype("<i2").tobytes()
    detector, found = AnswerDetector(RATE), []
    for at in range(0, len(pcm), 640):
        found += [(answer.start / RATE, answer.reason) for answer in detector.feed(pcm[at:at + 640])]
    return found


@pytest.fixture(scope="module")
def hello(speech) -> np.ndarray:
    return np.frombuffer(decode_to_pcm(speech, RATE), dtype="<i2")[:int(1.2 * RATE)] / 32768.0


DIAL = [tone(425, 1.5, 0.3), dialled("0475123456"), silence(2.0)]      # ends at 5.5 s


@pytest.mark.parametrize("hz, on, off", [(425, 1.0, 3.0), (425, 1.0, 4.0), (440, 1.5, 3.5)])
def test_a_voice_after_the_ringback_is_the_answer_at_its_onset(hello, hz, on, off):
    rings = ringback(hz, on, off, 2)
    voice_at = 5.5 + len(rings) / RATE + 0.5
    [(at, reason)] = answers([*DIAL, rings, silence(0.5), hello, silence(1.0)])
    assert reason == "voice" and abs(at - voice_at) < 0.05


def test_a_voice_without_any_ringback_is_the_answer(hello):
    [(at, reason)] = answers([*DIAL, hello, silence(1.0)])
    assert reason == "voice" and abs(at - 5.5) < 0.05


@pytest.mark.parametrize("hz, on, off", [(425, 1.0, 3.0), (440, 1.5, 3.5)])
def test_dial_tone_and_ringback_alone_are_never_an_answer(hz, on, off):
    assert answers([tone(425, 10.0, 0.3)]) == []
    assert answers([*DIAL, ringback(hz, on, off, 4)]) == []


def test_a_busy_tone_is_not_a_ringback_that_stopped():
    assert answers([*DIAL, ringback(425, 0.5, 0.5, 6), silence(5.0)]) == []


def test_keys_dialled_even_held_down_are_never_an_answer():
    assert answers([tone(425, 1.0, 0.3), dialled("0475123456", held=0.6), silence(3.0)]) == []


def test_a_ringback_that_stops_after_its_cadence_is_an_answer_by_a_silent_party():
    [(at, reason)] = answers([*DIAL, ringback(425, 1.0, 3.0, 3), silence(4.0)])
    assert reason == "ringback-ended" and abs(at - (5.5 + 3 * 4.0)) < 0.05     # when the 4th burst was due


def test_a_shop_assistant_who_speaks_over_the_ringback_is_not_taken_for_the_answer_until_it_ends(hello):
    rings = ringback(425, 1.0, 3.0, 2)
    rings[int(0.2 * RATE):int(0.2 * RATE) + len(hello) // 3] += hello[:len(hello) // 3]    # a word over a burst
    assert answers([*DIAL, rings]) == []
