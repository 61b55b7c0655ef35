"""FSK caller ID on the line audio: ETSI EN 300 659-1/-2/-3 and Bellcore SDMF/MDMF messages sent
at 1200 baud in V.23 tones (mark 1300 Hz, space 2100 Hz) or Bell 202 tones (1200 / 2200 Hz),
around the first ring or before it.

The exchange sends a channel seizure (alternating bits), a mark signal (about 180 one bits), then
the message, each byte framed by a start bit and a stop bit (8 data bits, LSB first); the message
is its type, its length, its body and a checksum that makes the bytes sum to 0 mod 256.

The receiver listens to the line whenever no call is in progress, so it is built to be cheap in
pure Python (the recorder process does not load numpy): a period weaker than any caller ID costs
one energy sum; otherwise a few C-level passes over the samples (`map`, `accumulate`) mix them
down to complex baseband at the middle of the two tones and sum them over a bit; 4000 times a
second, the sign of the phase advance says mark (below the middle) or space (above). Bytes are
framed as a UART does, the bit clock taken afresh from each start bit's edge (interpolated between
two values); a message starts after a long enough mark. Nothing is believed without its framing
and its checksum: caller ID that fails them gives no number, only a log line. `bench/fsk`
measures the decode rate and the CPU beside the DTMF caller-ID listener's.
"""

import logging
import math
import re
from array import array
from dataclasses import dataclass
from itertools import accumulate, repeat
from operator import lt, mul, sub

from appliance.dtmf import DBM0_PEAK

log = logging.getLogger(__name__)

BAUD = 1200
TONES = {"v23": (1300.0, 2100.0), "bell202": (1200.0, 2200.0)}      # (mark, space) in Hz
MIN_LEVEL_DBM0 = -46.0      # a period weaker than a sine this strong is not searched (lines give -40 and up)
MIN_MARK_BITS = 40          # before a message: EN 300 659-1 sends 180 ± 25 (80 ± 25 off-hook)
MAX_GAP_BITS = 20           # of mark after a byte: a message silent longer was cut short
SEIZURE_BITS = 300          # what the encoder sends, as EN 300 659-1 asks
MARK_BITS = 180
MIXER_SCALE = 64            # an integer mixer: its sums are exact

SDMF, MDMF = 0x04, 0x80     # Bellcore single-data-message caller ID; call set-up (ETSI, Bellcore MDMF)
DATE_TIME, NUMBER, NUMBER_ABSENT, NAME, NAME_ABSENT = 0x01, 0x02, 0x04, 0x07, 0x08
REASONS = {"O": "unavailable", "P": "private"}
REASON_CODES = {reason: code for code, reason in REASONS.items()}
_NUMBER = re.compile(r"\+?[0-9*#]{1,32}")
_SEPARATORS = re.compile(r"[ ().-]")


@dataclass(frozen=True)
class CallerIdMessage:
    """A caller-ID message whose checksum held. `date` is MMDD and `time` HHMM, the exchange's
    local time; `number_reason` / `name_reason` say why the number / name is missing
    ("private" or "unavailable")."""

    kind: str               # "sdmf" or "mdmf"
    number: str | None
    name: str | None
    date: str | None
    time: str | None
    number_reason: str | None
    name_reason: str | None
    raw: bytes


class _Discriminator:
    """Every `step` samples, the sign of which tone the last bit's worth of audio holds: negative
    for the lower (mark), positive for the higher (space), with a size that grows with the level."""

    def __init__(self, rate: int, mark: float, space: float):
        centre = (mark + space) / 2
        self.cycle = rate // math.gcd(rate, round(centre))
        angles = [2 * math.pi * centre * k / rate for k in range(self.cycle)]
        self._cos = [round(MIXER_SCALE * math.cos(a)) for a in angles]
        self._sin = [round(-MIXER_SCALE * math.sin(a)) for a in angles]
        self.window = round(rate / BAUD)
        # Past the sum over a bit, the baseband holds nothing above 1200 Hz: 4000 values a second
        # show it, and cost a fraction of all the samples' work.
        self.step = max(1, rate // 4000)
        # The phase turns by a quarter over `lag` values at either tone: the strongest sign.
        self.lag = max(1, round(rate / self.step / (2 * (space - mark))))
        self.reset()

    def reset(self) -> None:
        """Forget the audio so far (the line was quiet)."""
        self._phase = 0
        self._skip = 0                                          # samples to pass before the next value
        self._sums_i = self._sums_q = [0] * self.window        # running sums, the last `window`
        self._base_i = self._base_q = [0] * self.lag           # baseband, the last `lag` values

    def _mixer(self, table: list[int], n: int) -> list[int]:
        while len(table) < self._phase + n:
            table.extend(table[:self.cycle])
        return table[self._phase:self._phase + n]

    def feed(self, samples: array) -> list[int]:
        """One value per `step` samples: below zero for mark, above for space."""
        n, window, lag, step, skip = len(samples), self.window, self.lag, self.step, self._skip
        mixed_i = map(mul, samples, self._mixer(self._cos, n))
        mixed_q = map(mul, samples, self._mixer(self._sin, n))
        self._phase = (self._phase + n) % self.cycle
        sums_i = self._sums_i + list(accumulate(mixed_i, initial=self._sums_i[-1]))[1:]
        sums_q = self._sums_q + list(accumulate(mixed_q, initial=self._sums_q[-1]))[1:]
        # Kept from the last one on, so that they stay small however long the line is heard.
        self._sums_i = [value - sums_i[-1] for value in sums_i[-window:]]
        self._sums_q = [value - sums_q[-1] for value in sums_q[-window:]]
        base_i = self._base_i + list(map(sub, sums_i[window + skip::step], sums_i[skip:n:step]))
        base_q = self._base_q + list(map(sub, sums_q[window + skip::step], sums_q[skip:n:step]))
        self._skip = (skip - n) % step
        self._base_i, self._base_q = base_i[-lag:], base_q[-lag:]
        # Im(z[k] · conj(z[k - lag])): the phase advance over `lag` values.
        new = len(base_i) - lag
        return list(map(sub, map(mul, base_i[:new], base_q[lag:]), map(mul, base_q[:new], base_i[lag:])))


class _Framer:
    """Start-stop framing of the discriminator's output into messages (type, length, body,
    checksum), each found after a mark of at least MIN_MARK_BITS."""

    def __init__(self, rate: float):
        bit = rate / BAUD
        self.mark_run = b"\x01" * round(MIN_MARK_BITS * bit)
        self.gap = round(MAX_GAP_BITS * bit)
        self.offsets = [(k + 0.5) * bit for k in range(10)]     # of the bits' centres from a start edge
        self.reset()

    @property
    def busy(self) -> bool:
        """A message has begun (its mark was heard)."""
        return self._until is not None

    def reset(self) -> None:
        """Forget the audio so far."""
        self._soft: list[int] = []
        self._marks = bytearray()          # 1 where the discriminator says mark
        self._pos = 0                      # searched up to here
        self._until: int | None = None     # a message's next start bit must come before this
        self._bytes = bytearray()

    def feed(self, values: list[int]) -> list[bytes]:
        """Take the discriminator's output; return the messages it completes (checksum unchecked)."""
        self._soft += values
        self._marks += bytes(map(lt, values, repeat(0)))
        messages = []
        while (step := self._step()) is not None:
            if step:
                messages.append(step)
        if self._pos > 8 * len(self.mark_run):
            del self._soft[:self._pos], self._marks[:self._pos]
            if self._until is not None:
                self._until -= self._pos
            self._pos = 0
        return messages

    def _step(self) -> bytes | None:
        """Advance by one search or one byte: None when more audio is needed, a complete
        message, or b"" for progress."""
        marks = self._marks
        if self._until is None:
            run = marks.find(self.mark_run, self._pos)
            edge = -1 if run < 0 else marks.find(b"\x00", run + len(self.mark_run))
            if edge < 0:        # search on from where a mark run could still start, next time
                self._pos = run if run >= 0 else max(self._pos, len(marks) - len(self.mark_run) + 1)
                return None
            self._pos, self._until, self._bytes = edge - 1, edge + self.gap, bytearray()
            return b""
        edge = marks.find(b"\x01\x00", self._pos, self._until) + 1        # mark, then space
        if edge == 0:
            if len(marks) < self._until:
                return None
            self._until = None              # the message stopped short: look for the next mark
            return b""
        # The edge between two values, where the discriminator crosses zero: the bit clock comes
        # from it to a fraction of a value.
        before, after = self._soft[edge - 1], self._soft[edge]
        centres = [round(edge - 1 + before / (before - after) + offset) for offset in self.offsets]
        if len(marks) < centres[-1] + 2:
            return None
        bits = [sum(self._soft[centre - 1:centre + 2]) < 0 for centre in centres]
        if bits[0] or not bits[9]:
            self._pos = edge                # a glitch, not a start bit: try the next edge
            return b""
        self._bytes.append(sum(bit << k for k, bit in enumerate(bits[1:9])))
        self._pos = centres[9]
        self._until = self._pos + self.gap
        if len(self._bytes) >= 2 and len(self._bytes) == self._bytes[1] + 3:
            self._until = None
            return bytes(self._bytes)
        return b""


class FskReceiver:
    """Feed mono s16 PCM of the line in any chunk sizes; get the caller-ID messages it holds."""

    def __init__(self, rate: int = 8000, variant: str = "v23", source: str = "FSK caller ID"):
        mark, space = TONES[variant]
        self.source = source            # how the log names where a bad message came from
        self._discriminator = _Discriminator(rate, mark, space)
        self._framer = _Framer(rate / self._discriminator.step)
        self._quiet = (DBM0_PEAK * 10 ** (MIN_LEVEL_DBM0 / 20)) ** 2 / 2      # mean square of that sine
        self._listening = False

    def feed(self, pcm: bytes) -> list[CallerIdMessage]:
        """Add audio; return the messages completed in it."""
        samples = array("h")
        samples.frombytes(pcm)
        if not self._framer.busy and sum(map(mul, samples, samples)) < self._quiet * len(samples):
            if self._listening:
                self._discriminator.reset()
                self._framer.reset()
                self._listening = False
            return []
        self._listening = True
        found = (parse(raw, self.source) for raw in self._framer.feed(self._discriminator.feed(samples)))
        return [message for message in found if message is not None]

    def flush(self) -> list[CallerIdMessage]:
        """The end of the audio: a message cut short is lost."""
        return []


def _text(value: bytes) -> str | None:
    text = value.decode("latin-1").strip()
    return text if text.isprintable() and text else None


def _number(value: bytes, source: str) -> tuple[str | None, str | None]:
    """(number, reason it is missing) from a number field, which may hold a reason code instead."""
    text = _text(value) or ""
    if text in REASONS:
        return None, REASONS[text]
    number = _SEPARATORS.sub("", text)
    if _NUMBER.fullmatch(number):
        return number, None
    log.warning("%s: a number that is not one (%r): ignored", source, text)
    return None, "unavailable"


def _parameters(body: bytes) -> list[tuple[int, bytes]] | None:
    """The (type, value) parameters of an MDMF body, or None if they do not fill it exactly."""
    out, at = [], 0
    while at + 2 <= len(body):
        kind, length = body[at], body[at + 1]
        if at + 2 + length > len(body):
            return None
        out.append((kind, body[at + 2:at + 2 + length]))
        at += 2 + length
    return out if at == len(body) else None


def parse(message: bytes, source: str = "FSK caller ID") -> CallerIdMessage | None:
    """Check and read a whole message (type, length, body, checksum). None, with a log line, for
    caller ID with a bad checksum or a body that does not parse; None, quietly, for other types
    (message waiting, charge advice, SMS, or noise that framed as bytes)."""
    if len(message) < 4 or len(message) != message[1] + 3:
        return None         # no message is empty: a length of 0 is noise framed as bytes
    kind, body = message[0], message[2:-1]
    if kind not in (SDMF, MDMF):
        log.debug("%s: message type 0x%02x is not caller ID (%s)", source, kind, message.hex(" "))
        return None
    if sum(message) % 256:
        log.warning("%s: caller ID with a bad checksum, ignored (%s)", source, message.hex(" "))
        return None
    fields = {"number": None, "name": None, "date": None, "time": None, "number_reason": None,
              "name_reason": None}
    if kind == SDMF:
        if len(body) < 9:
            log.warning("%s: a message too short for its type, ignored (%s)", source, message.hex(" "))
            return None
        stamp = body[:8].decode("latin-1")
        if stamp.isdigit():
            fields.update(date=stamp[:4], time=stamp[4:])
        fields["number"], fields["number_reason"] = _number(body[8:], source)
        return CallerIdMessage("sdmf", **fields, raw=message)
    parameters = _parameters(body)
    if parameters is None:
        log.warning("%s: a message whose parameters do not fit its length, ignored (%s)", source, message.hex(" "))
        return None
    for parameter, value in parameters:
        if parameter == DATE_TIME and len(value) == 8 and value.isdigit():
            fields.update(date=value[:4].decode(), time=value[4:].decode())
        elif parameter == NUMBER:
            fields["number"], fields["number_reason"] = _number(value, source)
        elif parameter == NUMBER_ABSENT:
            fields["number_reason"] = REASONS.get(_text(value) or "", "unavailable")
        elif parameter == NAME:
            fields["name"] = _text(value)
        elif parameter == NAME_ABSENT:
            fields["name_reason"] = REASONS.get(_text(value) or "", "unavailable")
    return CallerIdMessage("mdmf", **fields, raw=message)


def call_setup(number: str | None, when: str | None = None, name: str | None = None,
               number_reason: str | None = None) -> bytes:
    """An MDMF call set-up message (EN 300 659-3) with its checksum: `when` is MMDDHHMM;
    `number_reason` ("private" or "unavailable") stands in for a missing number."""
    parameters = []
    if when is not None:
        parameters.append((DATE_TIME, when.encode()))
    if number is not None:
        parameters.append((NUMBER, number.encode()))
    elif number_reason is not None:
        parameters.append((NUMBER_ABSENT, REASON_CODES[number_reason].encode()))
    if name is not None:
        parameters.append((NAME, name.encode("latin-1")))
    body = b"".join(bytes([kind, len(value)]) + value for kind, value in parameters)
    message = bytes([MDMF, len(body)]) + body
    return message + bytes([-sum(message) % 256])


def line_bits(message: bytes) -> list[int]:
    """The bits the exchange sends for `message`: channel seizure, mark, then each byte framed by
    a start and a stop bit, LSB first."""
    bits = [k % 2 for k in range(SEIZURE_BITS)] + [1] * MARK_BITS
    for byte in message:
        bits += [0, *((byte >> k) & 1 for k in range(8)), 1]
    return bits
