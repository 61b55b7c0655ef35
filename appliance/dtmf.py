"""In-band DTMF detection on the line audio: Goertzel filters on 205-sample windows at 8 kHz, with the
level, twist, dominance and duration checks of ITU-T Q.24 style receivers, so speech does not
make digits ("talk-off") and short tones of a real keypad are not missed.

Windows start every quarter window; a digit needs four consecutive windows that hold it (44 ms of
span), which tones of 30 ms or more give wherever they fall, and tones of 15 ms never do.
Pure Python on purpose: the recorder process does not load numpy. The row filters run first and
most windows of speech or noise fail there, so the filters cost about 6 ms of CPU per second of
speech here (11 ms running all eight), under one per cent of a core per channel listened to.
"""

import math
import operator
from array import array
from dataclasses import dataclass

ROWS = (697.0, 770.0, 852.0, 941.0)
COLUMNS = (1209.0, 1336.0, 1477.0, 1633.0)
KEYS = ("123A", "456B", "789C", "*0#D")

BLOCK_S = 0.0256            # 205 samples at 8 kHz: bins that separate the DTMF frequencies
STEPS_PER_BLOCK = 4
MIN_LEVEL_DBFS = -36.0      # per tone; about -33 dBm0, below the -25 dBm Q.24 lets a receiver ignore
MAX_NORMAL_TWIST_DB = 8.0   # column tone weaker than row tone
MAX_REVERSE_TWIST_DB = 8.0  # row tone weaker than column tone
MIN_DOMINANCE_DB = 8.0      # the chosen tone above the others of its group
MIN_TONE_SHARE = 0.5        # of the window's energy in the two tones: speech spreads its energy
MIN_BLOCKS = 4              # consecutive windows: Q.24 asks to accept 40 ms tones, reject under 20 ms
MIN_GAP_BLOCKS = 4          # windows without the key (a whole window's length) end a digit


@dataclass(frozen=True)
class Digit:
    """A detected key, from `start` for `length` samples (offsets in the detector's stream)."""
    key: str
    start: int
    length: int


def frequencies(key: str) -> tuple[float, float]:
    """The (row, column) frequencies of a key."""
    for row, keys in zip(ROWS, KEYS):
        if key in keys:
            return row, COLUMNS[keys.index(key)]
    raise ValueError(f"not a DTMF key: {key!r}")


def _level_db(amplitude: float) -> float:
    return 20 * math.log10(amplitude) if amplitude > 0 else -200.0


def _dominant(amplitudes: list[float], best: int) -> bool:
    """Whether the chosen tone stands MIN_DOMINANCE_DB above the others of its group."""
    return all(_level_db(a) <= _level_db(amplitudes[best]) - MIN_DOMINANCE_DB
               for i, a in enumerate(amplitudes) if i != best)


class DtmfDetector:
    """Feed mono s16 PCM in any chunk sizes; get the digits it holds, each once, at its end."""

    def __init__(self, rate: int = 8000):
        self.rate = rate
        self.block = round(BLOCK_S * rate)
        self.step = self.block // STEPS_PER_BLOCK
        self._coefficients = [2 * math.cos(2 * math.pi * f / rate) for f in ROWS + COLUMNS]
        self._pending = array("h")
        self._position = 0                  # samples consumed into whole blocks
        self._current: str | None = None    # the key being held
        self._run_start = 0
        self._run_blocks = 0
        self._gap = 0

    def feed(self, pcm: bytes) -> list[Digit]:
        """Add audio; return the digits that ended in it."""
        self._pending.frombytes(pcm)
        digits = []
        while len(self._pending) >= self.block:
            digits += self._track(self.classify(self._pending[:self.block]))
            del self._pending[:self.step]
            self._position += self.step
        return digits

    @property
    def settled(self) -> int:
        """The samples fed so far before which every digit has been returned: a key still held,
        or audio short of a whole block, may yet make one that starts later."""
        return self._run_start if self._current is not None else self._position

    def scan(self, pcm: bytes, period_bytes: int = 320) -> list[Digit]:
        """All the digits in a stretch of audio, fed period by period as capture delivers it."""
        digits = []
        for at in range(0, len(pcm), period_bytes):
            digits += self.feed(pcm[at:at + period_bytes])
        return digits + self.flush()

    def flush(self) -> list[Digit]:
        """The digit still held at the end of the audio, if it lasted long enough."""
        return self._track(None, final=True)

    def classify(self, block) -> str | None:
        """The key one block holds, or None: levels, twist, dominance and share of the energy."""
        total = sum(map(operator.mul, block, block))
        if total == 0:
            return None
        n = len(block)
        rows = self._amplitudes(block, self._coefficients[:4])
        row = max(range(4), key=rows.__getitem__)
        row_db = _level_db(rows[row])
        # The checks the rows alone can fail, before the column filters are run: the column tone is
        # at most MAX_REVERSE_TWIST_DB above the row tone, so this is the most the two can hold.
        most = rows[row] ** 2 * (1 + 10 ** (MAX_REVERSE_TWIST_DB / 10)) / 2 * n * 32768 ** 2
        if row_db < MIN_LEVEL_DBFS or not _dominant(rows, row) or most < MIN_TONE_SHARE * total:
            return None
        columns = self._amplitudes(block, self._coefficients[4:])
        column = max(range(4), key=columns.__getitem__)
        column_db = _level_db(columns[column])
        if column_db < MIN_LEVEL_DBFS or not _dominant(columns, column):
            return None
        if row_db - column_db > MAX_NORMAL_TWIST_DB or column_db - row_db > MAX_REVERSE_TWIST_DB:
            return None
        tone_energy = (rows[row] ** 2 + columns[column] ** 2) / 2 * n * 32768 ** 2
        if tone_energy < MIN_TONE_SHARE * total:
            return None
        return KEYS[row][column]

    @staticmethod
    def _amplitudes(block, coefficients) -> list[float]:
        """Goertzel: the amplitude (full scale 1.0) in the block of each filter's frequency."""
        amplitudes = []
        for coefficient in coefficients:
            s1 = s2 = 0.0
            for x in block:
                s1, s2 = x + coefficient * s1 - s2, s1
            power = s1 * s1 + s2 * s2 - coefficient * s1 * s2
            amplitudes.append(2 * math.sqrt(max(power, 0.0)) / len(block) / 32768)
        return amplitudes

    def _track(self, key: str | None, final: bool = False) -> list[Digit]:
        """Turn per-block keys into digits: held long enough, ended by a long enough pause."""
        out = []
        if key is not None and key == self._current:
            self._run_blocks += 1
            self._gap = 0
            return out
        if key is None and self._current is not None and not final:
            self._gap += 1
            if self._gap < MIN_GAP_BLOCKS:
                return out          # a dropped block inside a tone does not split it
        if self._current is not None and self._run_blocks >= MIN_BLOCKS:
            length = self.block + (self._run_blocks - 1) * self.step
            out.append(Digit(self._current, self._run_start, length))
        self._current, self._run_blocks, self._gap = key, (1 if key else 0), 0
        self._run_start = self._position
        return out


class ClipDecoder:
    """DTMF caller ID (CLIP, ETSI EN 300 659-1 style) as some European exchanges send it around
    the first ring: `A` + the number + `C`; `B` + a reason code + `C` when there is no number
    (`B00C` unavailable, `B10C` private). Feed it the keys heard on an idle line."""

    REASONS = {"00": "unavailable", "10": "private"}

    def __init__(self):
        self._keys = ""

    def key(self, key: str) -> tuple[str | None, str | None] | None:
        """Take one key; at the end of a message return (number, reason why there is none)."""
        if key in "AB":
            self._keys = key
            return None
        if not self._keys:
            return None
        if key != "C":
            self._keys += key
            return None
        message, self._keys = self._keys, ""
        if message[0] == "A" and len(message) > 2:
            return message[1:], None
        if message[0] == "B":
            return None, self.REASONS.get(message[1:], "unavailable")
        return None
