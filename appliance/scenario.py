"""Simulation scenarios: what happens on the line, when. The format is documented in docs/simulate.md.

A scenario is turned into two timelines that share one clock: pin edges (ring bursts, off-hook,
flashes, contact chatter, on-hook) and the audio the line carries (the call's audio from off-hook
on, with DTMF tones mixed in).
"""

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from appliance.analog import fsk
from appliance.codec import decode_to_pcm
from appliance.config import load_toml
from appliance.dtmf import frequencies
from appliance.errors import ScenarioError

ANSWER_AFTER_LAST_RING_S = 0.5
CALLER_ID_AFTER_RING_S = 0.3
CALLER_ID_AFTER_ANSWER_S = 1.0    # a modem that decodes the data late reports it in the call
CLIP_TONE_S = 0.07          # DTMF CLIP: tones and pauses of 70 ms, ending before the first ring
CLIP_BEFORE_RING_S = 0.3
FSK_LEVEL = 0.1             # FSK caller ID, peak, full scale = 1 (about -17 dBm0)
DT_AS = (2130.0, 2750.0)    # the dual-tone alerting signal before FSK sent ahead of the ring (EN 300 659-1)
DT_AS_S = 0.1
DT_AS_GAP_S = 0.1           # from its end to the FSK
RP_AS_S = 0.25              # the ring-pulse alerting signal before FSK (EN 300 659-1: 200-300 ms)…
RP_AS_GAP_S = 0.6           # …its end to the FSK (500-800 ms)
RP_AS_FIRST_RING_S = 0.6    # the FSK's end to the first ring (at least 500 ms)
BUTTON_PRESS_S = 0.15
DTMF_TONE_S = 0.1
DTMF_GAP_S = 0.1
DTMF_LEVEL = 0.25          # peak of each of the two tones, full scale = 1 (about -15 dBFS each)
LINE_NOISE_LEVEL = 30      # samples of background hiss, so the line is never digital silence



class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Dtmf(_Strict):
    """Digits sent in-band, starting `at` seconds after off-hook."""
    at: float = Field(ge=0)
    digits: str = Field(pattern=r"^[0-9*#A-D]+$")


class Pause(_Strict):
    """The pause button pressed `at` seconds after off-hook, and again `length` seconds later
    (no `length`: left on)."""
    at: float = Field(gt=0)
    length: float | None = Field(None, gt=0)


class LineSound(_Strict):
    """A sound file the line carries `at` seconds from the call's `at` (below 0: before it), added
    to whatever else it carries: a signal recorded from a real exchange, played before the answer."""
    at: float
    audio: Path

    @field_validator("audio", mode="before")
    @classmethod
    def _path(cls, value):
        return Path(value) if isinstance(value, str) else value


class ScenarioCall(_Strict):
    """One call on the simulated line."""
    direction: Literal["incoming", "outgoing"]
    at: float = Field(ge=0)
    line: str | None = None
    rings: int = Field(2, ge=1, le=20)
    answered: bool = True
    caller_id: str | None = Field(None, pattern=r"^\+?[0-9]{2,20}$")
    caller_id_timing: Literal["before_ring", "before_ring_rp_as", "after_first_ring", "after_answer"] | None = None
    audio: Path | None = None
    talk: float | None = Field(None, gt=0)
    dtmf: list[Dtmf] = []
    bounce_ms: float = Field(0, ge=0, le=200)
    flash_at: list[float] = []
    flash_ms: float = Field(300, gt=0, le=10000)
    pause: list[Pause] = []
    agreement_at: list[float] = []
    private_at: list[float] = []        # the private button; before 0: pressed before the off-hook
    sounds: list[LineSound] = []

    @model_validator(mode="before")
    @classmethod
    def _audio_path(cls, data):
        if isinstance(data, dict) and isinstance(data.get("audio"), str):
            data = {**data, "audio": Path(data["audio"])}
        return data

    @model_validator(mode="after")
    def _consistent(self):
        if self.caller_id_timing is not None and self.caller_id is None:
            raise ValueError("`caller_id_timing` needs a `caller_id`")
        if not self.answered:
            if self.direction != "incoming":
                raise ValueError("only an incoming call can go unanswered")
            return self
        if self.audio is None and self.talk is None:
            raise ValueError("a call needs `audio`, `talk`, or both")
        if any(f <= 0 for f in self.flash_at) or (self.talk and any(f >= self.talk for f in self.flash_at)):
            raise ValueError("each `flash_at` must fall inside the call: after 0 and before `talk`")
        return self


class Scenario(_Strict):
    """The whole scenario file."""
    ring_on_s: float = Field(1.0, gt=0, le=5)
    ring_off_s: float = Field(2.0, gt=0, le=10)
    call: list[ScenarioCall] = []


@dataclass(frozen=True)
class PinEdge:
    """Drive one line's input to a logical level (True = active) at `t` seconds from the start."""
    t: float
    line: str
    input: str          # "hook" or "ring"
    active: bool


@dataclass(frozen=True)
class ModemLine:
    """A line of text a line's caller-ID modem sends at `t` seconds from the start."""
    t: float
    line: str
    text: str


@dataclass
class Plan:
    """A scenario laid out on the clock: pin edges, modem output, each line's audio, and when it
    is all over."""
    edges: list[PinEdge]
    audio: dict[str, np.ndarray]
    end: float
    offhooks: list[tuple[str, float]]   # (line, off-hook time) of each call, in scenario order
    modem: list[ModemLine]


def load_scenario(path: Path) -> tuple[Scenario, Path]:
    """Read and validate a scenario file; return it with the folder its audio paths are relative to."""
    path = Path(path)
    scenario = load_toml(path, Scenario, "scenario", ScenarioError)
    for index, call in enumerate(scenario.call):
        if call.audio is not None and not (path.parent / call.audio).is_file():
            raise ScenarioError(f"invalid scenario in {path}:\n  call[{index}].audio: no such file "
                                f"{path.parent / call.audio}")
    return scenario, path.parent


def _toggle_edges(t: float, line: str, pin: str, active: bool, bounce_s: float, rng) -> list[PinEdge]:
    """A transition to `active` at `t`, with contact chatter for `bounce_s` after it."""
    edges = [PinEdge(t, line, pin, active)]
    at, level = t, active
    while bounce_s > 0:
        at += rng.uniform(0.0005, 0.003)
        if at >= t + bounce_s:
            break
        level = not level
        edges.append(PinEdge(at, line, pin, level))
    if edges[-1].active != active:
        edges.append(PinEdge(t + bounce_s, line, pin, active))
    return edges


def dtmf_tone(digit: str, rate: int, seconds: float = DTMF_TONE_S, level: float = DTMF_LEVEL) -> np.ndarray:
    """One DTMF digit as float samples (full scale 1.0)."""
    low, high = frequencies(digit)
    t = np.arange(int(seconds * rate)) / rate
    return level * (np.sin(2 * np.pi * low * t) + np.sin(2 * np.pi * high * t))


def caller_id_signal(source: str, number: str, rate: int, before_ring: bool) -> np.ndarray:
    """Caller ID as the line carries it, as float samples: DTMF CLIP keys (`+` sent as `00`), or
    an FSK call set-up message (number, date and time) in the `source`'s tones ("fsk-v23",
    "fsk-bell202"), after a DT-AS alerting signal when it comes before the ring."""
    if source == "dtmf":
        keys = "A" + number.replace("+", "00") + "C"
        return np.concatenate([np.concatenate([dtmf_tone(k, rate, CLIP_TONE_S), np.zeros(int(CLIP_TONE_S * rate))])
                               for k in keys])
    mark, space = fsk.TONES[source.removeprefix("fsk-")]
    message = fsk.call_setup(number, time.strftime("%m%d%H%M", time.gmtime()))
    bits = np.array(fsk.line_bits(message))
    at_bit = np.arange(len(bits) * rate // fsk.BAUD) * fsk.BAUD // rate
    signal = FSK_LEVEL * np.sin(2 * np.pi * np.cumsum(np.where(bits[at_bit] == 1, mark, space)) / rate)
    if not before_ring:
        return signal
    t = np.arange(int(DT_AS_S * rate)) / rate
    alert = FSK_LEVEL * (np.sin(2 * np.pi * DT_AS[0] * t) + np.sin(2 * np.pi * DT_AS[1] * t))
    return np.concatenate([alert, np.zeros(int(DT_AS_GAP_S * rate)), signal])


def plan(scenario: Scenario, base: Path, lines: list[str], rate: int, seed: int = 0,
         caller_id: dict[str, str] | None = None, length: float = 0.0) -> Plan:
    """Lay a scenario out on the clock for the given line names (a call without `line` goes on the
    first). Times are seconds from the scenario's start. `caller_id` says how each line gets
    caller ID (its configuration's `caller_id`): as DTMF CLIP or FSK in its audio, or by default
    through its modem; before the first ring or in the pause after it, as the call's
    `caller_id_timing` says (by default before it for DTMF CLIP, after it otherwise). The audio
    lasts a second past the end, or `length` seconds if that is longer."""
    caller_id = caller_id or {}
    rng = random.Random(seed)
    edges: list[PinEdge] = []
    modem: list[ModemLine] = []
    offhooks = []
    segments: dict[str, list[tuple[float, np.ndarray]]] = {name: [] for name in lines}
    end = 0.0
    cadence = scenario.ring_on_s + scenario.ring_off_s
    for index, call in enumerate(scenario.call):
        line = call.line or lines[0]
        if line not in segments:
            raise ScenarioError(f"scenario call[{index}].line: no line named {line!r} "
                                f"(configured: {', '.join(lines)})")
        for sound in call.sounds:
            if call.at + sound.at < 0:
                raise ScenarioError(f"scenario call[{index}].sounds: a sound at {sound.at} s starts before the "
                                    f"scenario does")
            pcm = np.frombuffer(decode_to_pcm(base / sound.audio, rate), dtype="<i2") / 32768.0
            segments[line].append((call.at + sound.at, pcm))
        if call.direction == "incoming":
            for burst in range(call.rings):
                start = call.at + burst * cadence
                edges += [PinEdge(start, line, "ring", True),
                          PinEdge(start + scenario.ring_on_s, line, "ring", False)]
                modem.append(ModemLine(start, line, "RING"))
            offhook = call.at + (call.rings - 1) * cadence + scenario.ring_on_s + ANSWER_AFTER_LAST_RING_S
            if call.caller_id is not None:
                source = caller_id.get(line, "modem")
                timing = call.caller_id_timing or ("before_ring" if source == "dtmf" else "after_first_ring")
                before = timing == "before_ring"
                gap = call.at + scenario.ring_on_s + CALLER_ID_AFTER_RING_S     # in the pause after the first burst
                if timing == "after_answer":
                    if source.startswith("fsk-") or not call.answered:
                        raise ScenarioError(f"scenario call[{index}].caller_id_timing: only a modem or DTMF CLIP "
                                            f"give caller ID after the answer, of a call that is answered")
                    gap = offhook + CALLER_ID_AFTER_ANSWER_S
                if timing == "before_ring_rp_as" and not source.startswith("fsk-"):
                    raise ScenarioError(f"scenario call[{index}].caller_id_timing: a ring pulse (RP-AS) announces "
                                        f"FSK caller ID only: the line's caller_id is {source!r}")
                if source == "modem":
                    # MCI format, as the exchange's data comes out of a modem.
                    at = max(0.0, call.at - CLIP_BEFORE_RING_S) if before else gap
                    stamp = time.gmtime()
                    modem += [ModemLine(at, line, f"DATE = {stamp.tm_mon:02d}{stamp.tm_mday:02d}"),
                              ModemLine(at, line, f"TIME = {stamp.tm_hour:02d}{stamp.tm_min:02d}"),
                              ModemLine(at, line, f"NMBR = {call.caller_id}")]
                else:
                    signal = caller_id_signal(source, call.caller_id, rate, before)
                    at = max(0.0, call.at - len(signal) / rate - CLIP_BEFORE_RING_S) if before else gap
                    if timing == "before_ring_rp_as":
                        at = call.at - RP_AS_FIRST_RING_S - len(signal) / rate
                        pulse = at - RP_AS_GAP_S - RP_AS_S
                        if pulse < 0:
                            raise ScenarioError(f"scenario call[{index}].at: a ring pulse and FSK before the first "
                                                f"ring need it at {call.at - pulse:.1f} s at least")
                        edges += [PinEdge(pulse, line, "ring", True), PinEdge(pulse + RP_AS_S, line, "ring", False)]
                    segments[line].append((at, signal))
            if not call.answered:
                end = max(end, offhook)
                continue
        else:
            offhook = call.at
        audio = np.zeros(0)
        if call.audio is not None:
            audio = np.frombuffer(decode_to_pcm(base / call.audio, rate), dtype="<i2") / 32768.0
        talk = call.talk if call.talk is not None else len(audio) / rate
        if any(f >= talk for f in call.flash_at):
            raise ScenarioError(f"scenario call[{index}].flash_at: each flash must come before the "
                                f"hang-up at {talk:.2f} s")
        audio = np.pad(audio[:int(talk * rate)], (0, max(0, int(talk * rate) - len(audio))))
        for send in call.dtmf:
            for n, digit in enumerate(send.digits):
                at = int((send.at + n * (DTMF_TONE_S + DTMF_GAP_S)) * rate)
                tone = dtmf_tone(digit, rate)[:max(0, len(audio) - at)]
                audio[at:at + len(tone)] += tone
        segments[line].append((offhook, audio))
        offhooks.append((line, offhook))
        bounce = call.bounce_ms / 1000
        edges += _toggle_edges(offhook, line, "hook", True, bounce, rng)
        for flash in call.flash_at:
            edges += _toggle_edges(offhook + flash, line, "hook", False, bounce, rng)
            edges += _toggle_edges(offhook + flash + call.flash_ms / 1000, line, "hook", True, bounce, rng)
        presses = [("agreement", at) for at in call.agreement_at] + [("private", at) for at in call.private_at]
        for pause in call.pause:
            presses.append(("pause", pause.at))
            if pause.length is not None:
                presses.append(("pause", pause.at + pause.length))
        for button, at in presses:
            edges += [PinEdge(offhook + at, line, button, True),
                      PinEdge(offhook + at + BUTTON_PRESS_S, line, button, False)]
        edges += _toggle_edges(offhook + talk, line, "hook", False, bounce, rng)
        end = max(end, offhook + talk + bounce)
    edges.sort(key=lambda e: e.t)
    modem.sort(key=lambda m: m.t)
    audio = {}
    for line, parts in segments.items():
        track = np.random.default_rng(seed).normal(0, LINE_NOISE_LEVEL / 32768, int(max(end + 1, length) * rate))
        for start, samples in parts:
            at = int(start * rate)
            track[at:at + len(samples)] += samples[:len(track) - at]
        audio[line] = (np.clip(track, -1, 32767 / 32768) * 32768).astype("<i2")
    return Plan(edges, audio, end, offhooks, modem)
