"""The rules of one call, for analog lines and SIP trunks alike: plain code with no I/O and no clock
of its own, events in, commands out.

A line tells the rules what happened (the call started, the notice ended, a key was heard, the
pause button was pressed, time passed, the call ended) and carries out the commands it gets back:
an analog line with its sound cards and spool, a SIP trunk with its relay and timeline. What the
rules decide is the same for both: whether the notice is played and when, where the recording
starts (`record_from`), the caller's opt-out (the key, from the party who heard the notice, within
its window after the notice) and what it destroys, a number on the do-not-record list (known at
the start, or later), the pause (by code or button, with its
automatic resume after `pause_max_s`), which keys are kept (none typed during a pause), how the
called party of an outgoing call is told (`outgoing`: the notice once it answers, a beep every
`beep_interval_s`, or nothing), and how the call's recording ends.

Times (`t`) are monotonic seconds; offsets (`offset_s`) are seconds into the call's recording,
counted from its first kept sample, as each line measures them.
"""

import math
from dataclasses import dataclass, field
from datetime import datetime

from appliance.config import CallRulesConfig
from appliance.selection import Selection


KEY_HEARD_S = 1.0       # a key pressed at a window's end is heard and acted on within this


@dataclass(frozen=True)
class PlayNotice:
    """Play the notice into the call now."""


@dataclass(frozen=True)
class StartRecording:
    """The notice has been played: keep the call's audio from `t` on (`record_from = notice_end`)."""
    t: float


@dataclass(frozen=True)
class Pause:
    """Write silence instead of the line from `t` on (or from what has already been written)."""
    t: float
    reason: str             # "dtmf", "button" or "screen"


@dataclass(frozen=True)
class Resume:
    """Record the line again from `t` on."""
    t: float


@dataclass(frozen=True)
class KeepKey:
    """Note the key pressed `offset_s` seconds into the recording."""
    offset_s: float
    key: str


@dataclass(frozen=True)
class Decline:
    """Stop recording and destroy what was recorded of the call: the caller opted out
    (`declined`), or the number is on the do-not-record list (`objected`)."""
    reason: str = "declined"


# How the log says why a call's recording was destroyed (`private`: kept without its number too).
DECLINED = {"declined": "the caller declined recording of the call",
            "objected": "the number is on the do-not-record list: the call is not recorded",
            "private": "a private call: not recorded",
            "off-schedule": "outside the line's recording schedule: not recorded",
            "not-selected": "not among the share of calls recorded"}


@dataclass(frozen=True)
class ListenForAnswer:
    """An outgoing call on a line that cannot tell when the called party answers: listen to its
    audio for the answer (ringback ending, then a voice) and report it with `answered`."""


@dataclass(frozen=True)
class Beep:
    """Play the warning tone into the call now (`outgoing = "beep"`)."""
    t: float


@dataclass(frozen=True)
class Finish:
    """The call ended at `t`: its recording is finalised as `state` (complete, interrupted,
    discarded), or, when it was declined, only its end is noted."""
    t: float
    state: str
    declined: bool = False


def wants_notice(rules: CallRulesConfig, direction: str) -> bool:
    """Whether a call in `direction` (incoming, outgoing, unknown) hears the notice."""
    return rules.outgoing == "announce" if direction == "outgoing" else rules.notice_incoming


@dataclass
class CallRules:
    """One call's rules. `lead_in_s`: the audio kept before the notice starts (an analog line's
    pre-roll; 0 on a trunk, whose recording starts at the answer). `notice_s`: how long the notice
    plays. `notice_possible`: False when no notice may be played: into a call under way before the
    recorder started (it would break into a conversation), or a trunk call in a codec the notice
    cannot be sent in. `objected`: the number is on the do-not-record list: nothing of the call
    is kept, and no notice is played. `selection` (with `when`, the call's local start): the line's
    schedule and share of calls; a call they leave out (`unselected`: `off-schedule` or `not-selected`) is
    refused the same way. A call refused for another reason takes no place in the share.
    `answer_known`: the call starts when the called party answers (a trunk's 200 OK); an analog
    line's outgoing call starts at the off-hook instead, and its answer is listened for."""

    rules: CallRulesConfig
    direction: str
    lead_in_s: float
    notice_s: float
    notice_possible: bool = True
    objected: bool = False
    selection: Selection | None = None
    when: datetime | None = None
    answer_known: bool = True
    unselected: str | None = field(init=False, default=None)
    notice: bool = field(init=False)
    recording: bool = field(init=False)         # the call's audio is kept (it may be paused)
    paused_until: float | None = field(init=False, default=None)   # monotonic: the automatic resume
    declined: bool = field(init=False, default=False)
    ended: bool = field(init=False, default=False)
    optout_until_s: float | None = field(init=False, default=None)
    private_until_s: float | None = field(init=False, default=None)
    started_at: float | None = field(init=False, default=None)
    answer_due: float | None = field(init=False, default=None)      # the fallback when none is heard
    beep_due: float | None = field(init=False, default=None)
    _keys: str = field(init=False, default="", repr=False)
    _first_keys: str = field(init=False, default="", repr=False)

    def __post_init__(self):
        if not self.objected and self.rules.record and self.selection is not None:
            self.unselected = self.selection.refusal(self.when)
        refused = self.objected or not self.rules.record or self.unselected is not None
        wanted = wants_notice(self.rules, self.direction) and not refused
        self.notice = self.notice_possible and wanted
        # Nothing is kept before the notice: a call that should hear it and cannot is not kept at all.
        waits = wanted and self.rules.record_from == "notice_end"
        self.recording = not waits and not refused
        self.declined = refused
        if self.rules.private_code is not None:
            self.private_until_s = self.lead_in_s + self.rules.private_window_s
        if self.notice and self.rules.optout_digit is not None:
            # From the notice's end, counted where the recording starts: with the lead-in before
            # the notice, or at the notice's end when nothing before it is kept. A notice that
            # waits for the answer moves it on (see `_answered`).
            self.optout_until_s = (0.0 if waits else self.lead_in_s + self.notice_s) + self.rules.optout_window_s

    @property
    def paused(self) -> bool:
        """Silence is written instead of the line."""
        return self.paused_until is not None

    def keys_matter_until_s(self) -> float | None:
        """Up to which offset a key can change something: the whole call with a pause code, the
        opt-out window's end, or None when no key matters."""
        if self.declined:
            return None
        if self.rules.pause_code is not None:
            return math.inf
        ends = [end for end in (self.optout_until_s, self.private_until_s) if end is not None]
        return max(ends) if ends else None

    def started(self, t: float) -> list:
        """The call started (answered, or off-hook) at `t`."""
        self.started_at = t
        if self.objected:
            return [Decline("objected")]
        if not self.rules.record:
            return [Decline("private")]
        if self.unselected is not None:
            return [Decline(self.unselected)]
        if self.direction == "outgoing" and self.tells_called_party:
            if self.answer_known:
                return self._answered(t)
            self.answer_due = t + self.rules.answer_fallback_s
            return [ListenForAnswer()]
        return [PlayNotice()] if self.notice else []

    # -- outgoing calls: the notice at the answer, or the beep ---------------------------------------

    @property
    def tells_called_party(self) -> bool:
        """An outgoing call whose called party is told it is recorded (the notice or the beep)."""
        if self.declined or self.direction != "outgoing":
            return False
        return self.notice or (self.rules.outgoing == "beep" and self.notice_possible)

    def answered(self, t: float) -> list:
        """The called party of an outgoing call answered at `t` (heard in the line's audio)."""
        if self.answer_due is None or self.ended or self.declined:
            return []
        return self._answered(t)

    def _answered(self, t: float) -> list:
        self.answer_due = None
        if self.rules.outgoing == "beep":
            self.beep_due = t
            return []
        if self.optout_until_s is not None and self.rules.record_from == "start":
            self.optout_until_s += t - self.started_at
        return [PlayNotice()]

    def _beep(self, now: float) -> list:
        if self.beep_due is None or now < self.beep_due or self.ended or self.declined:
            return []
        # The interval counts from the beep heard: an answer heard late, a late tick, do not bunch them.
        self.beep_due = now + self.rules.beep_interval_s
        return [Beep(now)]

    # ------------------------------------------------------------------------------------------------

    def notice_ended(self, t: float) -> list:
        """The notice has been played to its end at `t`."""
        if self.recording or self.declined or self.ended:
            return []
        self.recording = True
        return [StartRecording(t)]

    def key(self, key: str, t: float, offset_s: float, from_outside: bool) -> list:
        """A key pressed at `t`, `offset_s` into the recording. `from_outside`: by the party who
        heard the notice (the caller), who alone may opt out."""
        if self.declined or self.ended:
            return []
        self._keys = (self._keys + key)[-4:]
        private = self.rules.private_code
        if private is not None and private.startswith(self._first_keys):
            # The staff's code, as the call's first keys (before the number dialled, or at the answer).
            self._first_keys += key
            if (self._first_keys == private and self.started_at is not None
                    and t - self.started_at <= self.rules.private_window_s):
                return self._refuse("private")
        code = self.rules.pause_code
        if code is not None and self._keys.endswith(code):
            self._keys = ""
            return self._toggle_pause(t, "dtmf")
        if self.paused:
            return []           # keys typed during a pause (a card number) are not kept
        commands = [KeepKey(offset_s, key)]
        if (key == self.rules.optout_digit and from_outside and self.optout_until_s is not None
                and offset_s <= self.optout_until_s):
            self.declined, self.recording = True, False
            commands.append(Decline())
        return commands

    def objection(self) -> list:
        """The call's number, known only now (a caller ID after the answer), is on the
        do-not-record list: destroy what was kept, keep nothing more."""
        if self.declined or self.ended:
            return []
        return self._refuse("objected")

    def private_pressed(self, t: float) -> list:
        """The staff's private button at `t` (or, pressed just before, at the call's start): within
        `private_window_s` of the start, nothing of the call is kept, not even its number."""
        if self.declined or self.ended or self.started_at is None:
            return []
        if t - self.started_at > self.rules.private_window_s:
            return []
        return self._refuse("private")

    def _refuse(self, reason: str) -> list:
        self.declined, self.recording, self.paused_until = True, False, None
        self.answer_due = self.beep_due = None
        return [Decline(reason)]

    def pause_pressed(self, t: float, source: str = "button") -> list:
        """The pause button (or the screen's, `source = "screen"`) at `t`: pause, or resume when
        paused."""
        if not self.recording or self.declined or self.ended:
            return []
        return self._toggle_pause(t, source)

    def listenable(self, offset_s: float) -> bool:
        """Whether the call, `offset_s` into its recording, may be heard live: it is being kept
        and no key or button can still refuse it (the opt-out and private windows are over, and a
        key pressed at their end has been heard)."""
        if not self.recording or self.declined or self.ended:
            return False
        return all(end is None or offset_s > end + KEY_HEARD_S for end in (self.optout_until_s, self.private_until_s))

    def _toggle_pause(self, t: float, reason: str) -> list:
        if self.paused:
            self.paused_until = None
            return [Resume(t)]
        self.paused_until = t + self.rules.pause_max_s
        return [Pause(t, reason)]

    def deadline(self) -> float | None:
        """The next instant `tick` has something to do, or None."""
        due = [d for d in (self.answer_due, self.beep_due, self.paused_until) if d is not None]
        return min(due) if due else None

    def tick(self, now: float) -> list:
        """Time passes: no answer heard by the fallback (act as if answered), a beep due, a pause
        left on past `pause_max_s`."""
        commands = []
        if self.answer_due is not None and now >= self.answer_due and not self.ended:
            commands += self._answered(now)
        commands += self._beep(now)
        if self.paused_until is not None and now >= self.paused_until and not self.ended:
            self.paused_until = None
            commands.append(Resume(now))
        return commands

    def hung_up(self, t: float, interrupted: bool = False) -> list:
        """The call ended at `t` (`interrupted`: by the recorder stopping, not by a party)."""
        if self.ended:
            return []
        self.ended, self.answer_due, self.beep_due = True, None, None
        commands = []
        if self.paused:
            self.paused_until = None
            commands.append(Resume(t))       # the pause ends with the recording
        if self.declined:
            return commands + [Finish(t, "discarded", declined=True)]
        if interrupted:
            return commands + [Finish(t, "interrupted")]
        return commands + [Finish(t, "complete" if self.recording else "discarded")]
