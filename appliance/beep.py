"""The warning tone of `outgoing = "beep"`: a short sine played into an outgoing call every
`beep_interval_s`, so that the called party knows the call is recorded. Made with the standard
library only (the recorder process does not load numpy)."""

import array
import math
from dataclasses import dataclass

from appliance.config import CallRulesConfig
from appliance.store.spool import SAMPLE_BYTES

RAMP_S = 0.01       # rise and fall: a tone switched on and off at full level clicks


@dataclass(frozen=True)
class Tone:
    """A sound ready to play: mono s16le PCM at `rate`."""

    pcm: bytes
    rate: int

    @property
    def duration_s(self) -> float:
        """How long it plays."""
        return len(self.pcm) / SAMPLE_BYTES / self.rate


def beep_tone(rules: CallRulesConfig, rate: int) -> Tone:
    """The beep of a line's rules at `rate`: `beep_hz` for `beep_ms`, its peak at `beep_level_dbfs`."""
    count = round(rules.beep_ms * rate / 1000)
    ramp = max(1, round(RAMP_S * rate))
    peak = 32767 * 10 ** (rules.beep_level_dbfs / 20)
    step = 2 * math.pi * rules.beep_hz / rate
    samples = array.array("h", (round(peak * min(1.0, (n + 1) / ramp, (count - n) / ramp) * math.sin(step * n))
                                for n in range(count)))
    return Tone(samples.tobytes(), rate)
