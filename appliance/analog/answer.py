"""When the called party of an outgoing call answers, heard in the line's audio: an analog line
has no signal for it, only what it carries after the off-hook (dial tone, the keys dialled,
ringback, then a voice).

The audio is judged in blocks of 20 ms: quiet (near the line's noise floor), tone (most of its
energy within 400-450 Hz: European dial tone and ringback, 425 Hz, or France's 440 Hz) or sound.
The answer is the onset of sustained sound (`VOICE_S` of sound within `VOICE_WINDOW_S`) that is
not a key being dialled; or, after a ringback of at least two bursts 2-8 s apart, the burst that
does not come when its cadence says it should (an answer with nothing said yet). Tones never count, whatever
their cadence. Pure Python over whole blocks (`sum(map(mul))` runs in C): about a tenth of a
millisecond of CPU per block on a Pi, and only until the answer.
"""

import array
import math
from collections import deque
from dataclasses import dataclass
from operator import mul

from appliance.dtmf import DtmfDetector

BLOCK_S = 0.02
TONE_HZ = (410.0, 440.0)        # together they cover 400-450 Hz within a third of a block's bin
TONE_SHARE = 0.6                # of a block's energy at one of them: a tone
QUIET_DBFS = -50.0              # a block's RMS at or below this (or near the noise floor) is quiet
FLOOR_MARGIN = 10.0             # sound is at least this many times the quietest block's energy
VOICE_WINDOW_S = 0.8
VOICE_S = 0.5                   # of sound within the window: someone speaks
BURST_S = (0.2, 3.0)            # a ringback burst's length
CADENCE_S = (2.0, 8.0)          # from one burst's start to the next (busy tone's 1 s is not ringback)
CADENCE_SLACK_S = 1.5           # a burst this late after its period: the ringing stopped


@dataclass(frozen=True)
class Answer:
    """The called party answered at sample `start` of the audio fed (the onset of their voice)."""
    start: int
    reason: str                 # "voice" or "ringback-ended"


class AnswerDetector:
    """Feed the audio of an outgoing call from its off-hook; `feed` returns the answer once."""

    def __init__(self, rate: int):
        self.rate = rate
        self.block = round(BLOCK_S * rate)
        n = self.block
        self._tables = [(array.array("d", (math.cos(2 * math.pi * f * i / rate) for i in range(n))),
                         array.array("d", (math.sin(2 * math.pi * f * i / rate) for i in range(n)))) for f in TONE_HZ]
        self._quiet = (32768 * 10 ** (QUIET_DBFS / 20)) ** 2
        self._floor = math.inf
        self._pending = array.array("h")
        self._position = 0              # samples judged so far
        self._window: deque[tuple[int, bool]] = deque(maxlen=round(VOICE_WINDOW_S / BLOCK_S))   # (start, sound)
        self._tone_start: int | None = None
        self._bursts: list[tuple[int, int]] = []        # ringback bursts: (start, end)
        self._candidate: int | None = None     # a voice's onset, waiting to be told from a key
        self._confirm_at = 0
        self._keys = DtmfDetector(rate)     # the shop's dialling is sound too, but never an answer
        self.done = False

    def feed(self, pcm: bytes) -> list[Answer]:
        """Add audio; return [the answer] when it is found in it (once), else []."""
        if self.done:
            return []
        for key in self._keys.feed(pcm):
            if self._candidate is not None and key.start + key.length >= self._candidate:
                self._candidate = None
                self._window.clear()
        self._pending.frombytes(pcm)
        n, at = self.block, 0
        while len(self._pending) - at >= n:
            self._judge(self._pending[at:at + n])
            at += n
        del self._pending[:at]
        return self._decide()

    def flush(self) -> list[Answer]:
        """No more audio: nothing more to decide (the fallback timer acts instead)."""
        return []

    def _judge(self, samples: array.array) -> None:
        n, start = self.block, self._position
        self._position += n
        energy = sum(map(mul, samples, samples)) / n
        self._floor = min(self._floor, max(energy, 1.0))
        tone = max(sum(map(mul, samples, cos)) ** 2 + sum(map(mul, samples, sin)) ** 2 for cos, sin in self._tables)
        loud = energy > max(self._quiet, FLOOR_MARGIN * self._floor)
        is_tone = loud and 2 * tone / (n * n) >= TONE_SHARE * energy
        if is_tone and self._tone_start is None:
            self._tone_start = start
        elif not is_tone and self._tone_start is not None:
            if BURST_S[0] * self.rate <= start - self._tone_start <= BURST_S[1] * self.rate:
                self._bursts.append((self._tone_start, start))
            self._tone_start = None
            self._window.clear()        # what sounded with the tone was not an answer
            self._candidate = None
        self._window.append((start, loud and not is_tone))

    def _decide(self) -> list[Answer]:
        sound = [start for start, loud in self._window if loud]
        if self._candidate is None and self._tone_start is None and len(sound) * BLOCK_S >= VOICE_S:
            self._candidate, self._confirm_at = sound[0], self._position
        if self._candidate is not None and self._keys.settled >= self._confirm_at:
            self.done = True        # no key still sounding can have started before the voice
            return [Answer(self._candidate, "voice")]
        if len(self._bursts) >= 2 and self._tone_start is None and self._candidate is None:
            (first, _), (last, _) = self._bursts[-2:]
            due = last + (last - first)
            ringing = CADENCE_S[0] * self.rate <= last - first <= CADENCE_S[1] * self.rate
            if ringing and self._position > due + CADENCE_SLACK_S * self.rate:
                self.done = True
                return [Answer(due, "ringback-ended")]
        return []
