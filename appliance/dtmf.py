"""In-band DTMF detection on the line audio, held to the receiver limits of ITU-T Q.24 (ETSI ES 201 235-3
for European networks) in combination, with the checks that keep speech and music from making keys.

Must detect, all at once: each tone within ±1.5 % of its frequency, each at -30 to -4 dBm0, twist up
to 8 dB "normal" (the high-group tone weaker, as long lines leave it) and 4 dB "reverse" (the high
tone stronger, as telephones send it), tones and pauses of 40 ms. Must reject: a tone 3.5 % or more
off, tones of 20 ms, tones under the level floor. (Twist as Q.24's AT&T column, spandsp and
Asterisk name it; DVSI's AMBE-2000 manual, table 5-K, spells the two directions out.) Both
directions are accepted up to 11 dB here: an estimate of a weak tone beside a strong one errs by
about 2 dB, and some read the two limits the other way round.

How: the audio is cut into 5 ms sub-blocks, each turned into its DFT at the eight frequencies; a
window is the last four (20 ms), judged every sub-block. A tone's frequency comes from the phase its
DFT gains from one window to the next (not from how much it lost off its bin, which twist and speech
blur), and its level from the window's DFT corrected for that offset. A window holds a key when each
group has one tone standing out, near enough its frequency, loud enough, within the twist, the two
holding most of the window's energy, and nothing at 2·f1 - f2 or 2·f2 - f1 (a voice whose harmonics
fall on a row and a column also sounds there, DTMF never does). A key is a run of four such windows
(35 ms of tone: 40 ms tones make it wherever they fall, 20 ms ones never); at the start of a run,
both tones must have been 6 dB weaker shortly before, because a music chord often holds a note
while the melody brings the other one in. Three windows without the key end it; a 10 ms break
does not.

Pure Python on purpose: the recorder process does not load numpy. Silent sub-blocks cost one sum,
the column filters run only once a row tone stands out, and the costlier checks only on the rare
windows that passed all the others.
"""

import cmath
import math
import operator
from array import array
from collections import deque
from dataclasses import dataclass

ROWS = (697.0, 770.0, 852.0, 941.0)
COLUMNS = (1209.0, 1336.0, 1477.0, 1633.0)
KEYS = ("123A", "456B", "789C", "*0#D")

SUB_BLOCK_S = 0.005
WINDOW_SUB_BLOCKS = 4       # 20 ms windows, one every sub-block
MIN_LEVEL_DBM0 = -36.0      # per tone: Q.24 asks for -30, and lets a receiver ignore -40 and under
MAX_TWIST_DB = 11.0         # either tone under the other
MAX_OFFSET = 0.02           # of the tone's frequency: between Q.24's 1.5 % (take) and 3.5 % (refuse)
MIN_DOMINANCE_DB = 6.0      # the chosen tone over the other three of its group
MIN_TONE_SHARE = 0.6        # of the window's energy in the two tones
MIN_COMB_GAP_DB = 10.0      # the weaker tone over what sounds at 2·f1 - f2 and 2·f2 - f1
MIN_ONSET_DB = 6.0          # each tone over itself just before its key started
MIN_HITS = 4                # windows in a row that hold the key
MIN_GAP_WINDOWS = 3         # windows without it that end it
DBM0_PEAK = 32768 * 10 ** (-3.14 / 20)      # a 0 dBm0 sine's peak in s16 (G.711 A-law)
_QUIET = 0.01               # of a floor-level tone's energy: a sub-block this quiet holds no tone


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


class _SubBlock:
    """One sub-block's samples, energy and DFTs (the column ones made when first needed)."""

    __slots__ = ("samples", "energy", "rows", "columns")

    def __init__(self, samples, energy, rows):
        self.samples = samples
        self.energy = energy
        self.rows = rows
        self.columns = None


class DtmfDetector:
    """Feed mono s16 PCM in any chunk sizes; get the digits it holds, each once, at its end."""

    def __init__(self, rate: int = 8000):
        self.rate = rate
        self.sub_block = round(SUB_BLOCK_S * rate)
        self.window = WINDOW_SUB_BLOCKS * self.sub_block
        b = self.sub_block
        self._omega = [2 * math.pi * f / rate for f in ROWS + COLUMNS]
        self._tables = [[cmath.exp(-1j * w * n) for n in range(b)] for w in self._omega]
        # The phase a tone exactly on its frequency gains from one sub-block to the next.
        self._steps = [[cmath.exp(-1j * w * b * i) for i in range(WINDOW_SUB_BLOCKS)] for w in self._omega]
        floor = (10 ** (MIN_LEVEL_DBM0 / 20) * DBM0_PEAK) ** 2 / 2       # power of a tone at the floor
        self._floor_energy = floor * self.window
        self._quiet = _QUIET * floor * b
        self._pending = array("h")
        self._history: deque[_SubBlock] = deque(maxlen=2 * WINDOW_SUB_BLOCKS + 3)
        self._position = 0                  # samples consumed into sub-blocks
        self._current: str | None = None    # the key of the run being followed
        self._genuine = False               # whether that run started as a key does
        self._run_start = 0
        self._run_end = 0
        self._hits = 0
        self._gap = 0

    def feed(self, pcm: bytes) -> list[Digit]:
        """Add audio; return the digits that ended in it."""
        self._pending.frombytes(pcm)
        digits = []
        b = self.sub_block
        at = 0
        while len(self._pending) - at >= b:
            self._add(self._pending[at:at + b])
            at += b
            if len(self._history) > WINDOW_SUB_BLOCKS:
                digits += self._track(self._judge(list(self._history)[-WINDOW_SUB_BLOCKS - 1:]))
        del self._pending[:at]
        return digits

    @property
    def settled(self) -> int:
        """The samples fed so far before which every digit has been returned: a key still held,
        or audio short of a whole window, may yet make one that starts later (a run that did not
        start as a key does never will)."""
        if self._current is not None and self._genuine:
            return self._run_start
        return max(self._position - self.window + self.sub_block, 0)

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
        """The key the last 25 ms of `block` (s16 samples) hold by the checks of one window, before
        any run or onset is asked for; None if they hold none."""
        b = self.sub_block
        count = WINDOW_SUB_BLOCKS + 1
        if len(block) < count * b:
            return None
        start = len(block) - count * b
        subs = [self._make(array("h", block[start + i * b:start + (i + 1) * b])) for i in range(count)]
        return self._judge(subs)

    def _make(self, samples) -> _SubBlock:
        energy = sum(map(operator.mul, samples, samples))
        if energy < self._quiet:
            return _SubBlock(samples, energy, None)
        return _SubBlock(samples, energy, [sum(map(operator.mul, samples, t)) for t in self._tables[:4]])

    def _add(self, samples) -> None:
        self._history.append(self._make(samples))
        self._position += len(samples)

    def _columns(self, sub: _SubBlock) -> list:
        if sub.columns is None:
            sub.columns = [0j] * 4 if sub.rows is None else \
                [sum(map(operator.mul, sub.samples, t)) for t in self._tables[4:]]
        return sub.columns

    def _sum(self, values: list, k: int) -> complex:
        """A window's DFT at filter k from its sub-blocks' (None for a quiet one)."""
        steps = self._steps[k]
        return sum(v[k % 4] * s for v, s in zip(values, steps) if v is not None)

    def _judge(self, subs: list[_SubBlock]) -> str | None:
        """The key the last window of `subs` holds (the sub-block before it gives the phase)."""
        window = subs[1:]
        total = sum(sub.energy for sub in window)
        if total < self._floor_energy:       # two tones at the floor hold twice this
            return None
        rows = self._group([sub.rows for sub in subs], 0)
        if rows is None:
            return None
        row, row_power, row_omega = rows
        # The column tone holds at most MAX_TWIST_DB more than the row one: if even that leaves
        # the two short of their share, the column filters need not run.
        if row_power * (1 + 10 ** (MAX_TWIST_DB / 10)) * self.window < MIN_TONE_SHARE * total:
            return None
        columns = self._group([self._columns(sub) for sub in subs], 4)
        if columns is None:
            return None
        column, column_power, column_omega = columns
        twist = 10 * math.log10(column_power / row_power)
        if abs(twist) > MAX_TWIST_DB or (row_power + column_power) * self.window < MIN_TONE_SHARE * total:
            return None
        samples = array("h")
        for sub in window:
            samples += sub.samples
        if not self._clear_comb(samples, row_omega, column_omega):
            return None
        return KEYS[row][column]

    def _group(self, values: list, first: int):
        """The tone of one group in the window: (its index, power, frequency in radians per
        sample), or None when no tone of the group passes level, dominance and frequency."""
        window = values[1:]
        sums = [self._sum(window, k) for k in range(first, first + 4)]
        powers = [abs(s) ** 2 for s in sums]
        best = max(range(4), key=powers.__getitem__)
        if any(p * 10 ** (MIN_DOMINANCE_DB / 10) > powers[best] for i, p in enumerate(powers) if i != best):
            return None
        k = first + best
        before = self._sum(values[:-1], k)
        offset = cmath.phase(sums[best] * before.conjugate() * self._steps[k][1]) / self.sub_block
        if abs(offset) > MAX_OFFSET * self._omega[k]:
            return None
        # The window's DFT lost this much from the tone being off its frequency.
        n = self.window
        half = abs(offset) / 2
        loss = math.sin(n * half) / (n * math.sin(half)) if half else 1.0
        power = 2 * powers[best] / (n * loss) ** 2         # the tone's power: amplitude² / 2
        if power < self._floor_energy / self.window:
            return None
        return best, power, self._omega[k] + offset

    def _clear_comb(self, samples, row: float, column: float) -> bool:
        """Whether nothing sounds at 2·row - column and 2·column - row near as loud as the weaker
        tone (frequencies in radians per sample)."""

        def amplitude(omega: float) -> float:
            step = cmath.exp(-1j * omega)
            phasor, total = 1 + 0j, 0j
            for x in samples:
                total += x * phasor
                phasor *= step
            return abs(total)

        weaker = min(amplitude(row), amplitude(column))
        limit = weaker * 10 ** (-MIN_COMB_GAP_DB / 20)
        return all(amplitude(omega) <= limit for omega in (2 * row - column, 2 * column - row))

    def _onset(self, key: str) -> bool:
        """Whether both tones of `key`, now in the latest window, were MIN_ONSET_DB weaker in one
        of the windows that ended just before it began."""
        row = next(i for i, keys in enumerate(KEYS) if key in keys)
        column = 4 + KEYS[row].index(key)
        subs = list(self._history)
        w = WINDOW_SUB_BLOCKS
        now = subs[-w:]
        limit = 10 ** (-MIN_ONSET_DB / 10)
        levels = {k: abs(self._sum(self._values(now, k), k)) ** 2 for k in (row, column)}
        for end in range(len(subs) - w, w - 1, -1):
            before = subs[end - w:end]
            if all(abs(self._sum(self._values(before, k), k)) ** 2 <= limit * levels[k] for k in (row, column)):
                return True
        return len(subs) < 2 * w      # the stream began with the key: nothing before to compare

    def _values(self, subs: list[_SubBlock], k: int) -> list:
        return [sub.rows for sub in subs] if k < 4 else [self._columns(sub) for sub in subs]

    def _track(self, key: str | None, final: bool = False) -> list[Digit]:
        """Turn per-window keys into digits: held long enough, ended by a long enough pause."""
        out = []
        if key is not None and key == self._current:
            self._hits += 1
            self._gap = 0
            self._run_end = self._position
            return out
        if key is None and self._current is not None and not final:
            self._gap += 1
            if self._gap < MIN_GAP_WINDOWS:
                return out          # a dropped window inside a tone does not split it
        if self._current is not None and self._genuine and self._hits >= MIN_HITS:
            out.append(Digit(self._current, self._run_start, self._run_end - self._run_start))
        self._current, self._hits, self._gap = key, (1 if key else 0), 0
        self._genuine = key is not None and self._onset(key)
        self._run_start = self._position - self.window
        self._run_end = self._position
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
