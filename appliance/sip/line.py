"""The recording side of a SIP trunk: each answered call's two directions into one stereo spool
(caller left, callee right), then the archive and the catalogue, as for an analog line.

The relay's event loop must never wait on a disk, so it only places audio on the call's timeline
and queues the rest: a store thread per trunk creates rows and spools, notes keys and pauses, and
hands ended calls to the shared finaliser. The caller's choices work as on an analog line: the
opt-out key (from the outside party, within its window after the notice) destroys what was
recorded; the pause code writes silence until it is keyed again or `pause_max_s` passes.

Keys come as RFC 4733 telephone events (acted on as they arrive) or as DTMF tones in the audio.
The tones are listened for where an analog line listens for them (the whole call when there is a
pause code, else the outside party until the opt-out window ends): each tick hands the listened
channels' new audio to the store thread, whose detectors find the keys, and a later tick acts on
them. While a pause code is listened for, audio leaves the timeline for the spool only once it
has been listened to, so a pause keyed in-band silences everything from its key on. One
press counts once: a side that has sent a telephone event is no longer listened to (phones that
send events often leave the tone in the audio too), and a key heard in one channel within
`ECHO_S` of the same key from the other side is that press's echo. An ended call is closed once
its last audio has been listened to, so that an opt-out keyed just before hanging up counts.
"""

import array
import functools
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass

from appliance import callrules
from appliance.callrules import CallRules
from appliance.beep import beep_tone
from appliance.service import Worker
from appliance.store.archive import SPOOL_DIR
from appliance.store.callrow import CallRow, Desk
from appliance.clock import clock_synchronised, iso_from_mono, local_from_mono, wall_from_mono
from appliance.config import SipTrunkConfig
from appliance.control import Tap, refused
from appliance.dtmf import DtmfDetector
from appliance.live import LevelMeter
from appliance.notice import Notice, load_notice
from appliance.selection import selection_for
from appliance.sip import codecs
from appliance.sip.codecs import CODECS, Decoder
from appliance.sip.media import parse_rtp
from appliance.sip.stereo import Timeline
from appliance.store.spool import SpoolWriter

log = logging.getLogger(__name__)

CHANNELS = 2
JITTER_S = 0.2          # audio is taken off the timeline this far behind real time
EVENT_KEYS = "0123456789*#ABCD"     # RFC 4733 events 0-15
ECHO_S = 0.25           # the same key in the other channel this close to a press is that press
NEVER = 1 << 62         # a frame no call reaches
HEAR_S = 0.02           # the detectors let the relay's loop run between pieces this long


@dataclass
class CallFacts:
    """What the relay knows of a call when it asks for its recording."""

    direction: str          # incoming (from the trunk) or outgoing (from the PBX)
    caller_side: str        # "trunk" or "pbx"
    number: str | None
    started: float          # monotonic: the INVITE
    answered: float         # monotonic: the 2xx
    outside_side: str = "trunk"


class CallRecording:
    """One answered call being recorded at `rate` (16 kHz when wideband): its timeline, its spool
    once the store thread made it, the keys heard, the pause and the decline."""

    def __init__(self, line: "SipLine", facts: CallFacts, event_types, rules: CallRules, rate: int):
        self.line = line
        self.facts = facts
        self.rules = rules
        self.rate = rate
        self.event_types = event_types          # () -> the telephone-event payload types in use
        self.timeline = Timeline(facts.answered, rate)
        self.decoders: dict[tuple[int, int, int], Decoder] = {}   # by channel, SSRC and payload type
        self.lock = threading.Lock()
        self.spool: SpoolWriter | None = None
        self.pending: list[bytes] = []
        self.row = CallRow(line.desk)
        self.keep_from = 0 if rules.recording else NEVER    # frames before this are not kept (record_from)
        self.play_notice = False
        self.play_beep = None                   # () -> None: the relay sends the beep (outgoing = "beep")
        self.pause_timer = None
        self.last_event: dict[str, tuple[int, int, bool]] = {}    # by side: ssrc, timestamp, ended
        self.key_times: dict[tuple[str, str], float] = {}       # (side, key): when last taken
        self.sides = (facts.caller_side, "pbx" if facts.caller_side == "trunk" else "trunk")   # by channel
        # In-band keys. The loop's side: by channel, the next frame to listen to (None: not, or no
        # longer); whether to the end of the call, else until the opt-out window ends.
        self.listening: list[int | None] = [None, None]
        self.listen_whole_call = False
        self.detectors: list[tuple[int, DtmfDetector] | None] = [None, None]   # the store thread's
        self.heard: deque = deque()     # (frame, side, key) found, for the loop; None: the last audio
        self.checked = 0                # the store thread has listened up to this frame
        self.ended = False
        self.closing: tuple[float, str, bool] | None = None     # when the call ended, why, interrupted
        self.end_reason: str | None = None
        self.live = False                       # known to be kept: its audio goes to the taps too
        self.taps: tuple[Tap, ...] = ()

    def close_taps(self, discard: bool = False) -> None:
        """End every live listener's stream (`discard`: the call was declined)."""
        self.live = False
        for tap in self.taps:
            tap.close(discard)

    @property
    def declined(self) -> bool:
        """The caller opted out: nothing more is kept."""
        return self.rules.declined

    def channel_from(self, side: str) -> int:
        """Left (0) carries what the caller's side sends, right (1) what the callee's sends."""
        return 0 if side == self.facts.caller_side else 1

    def rtp(self, side: str, data: bytes, arrival: float) -> None:
        """A packet relayed from `side` (on the loop's thread)."""
        if self.declined or self.ended:
            return
        packet = parse_rtp(data)
        if packet is None:
            return
        if packet.payload_type in CODECS:
            channel = self.channel_from(side)
            stream = (channel, packet.ssrc, packet.payload_type)
            decoder = self.decoders.get(stream)
            if decoder is None:
                decoder = self.decoders[stream] = Decoder(packet.payload_type, self.rate)
            self.timeline.put(channel, packet.ssrc, packet.timestamp, decoder.decode(packet.payload), arrival)
        elif packet.payload_type in self.event_types() and len(packet.payload) >= 4:
            # One key is many packets with the same timestamp, the last three marking its end; a
            # new key has a new timestamp, or starts again after an end.
            event, end = packet.payload[0], bool(packet.payload[1] & 0x80)
            last = self.last_event.get(side)
            same = last is not None and last[:2] == (packet.ssrc, packet.timestamp)
            pressed = not same or (last[2] and not end)
            self.last_event[side] = (packet.ssrc, packet.timestamp, end or (not pressed and last[2]))
            if pressed and event < len(EVENT_KEYS):
                self.line.key(self, side, EVENT_KEYS[event], arrival)

    def notice_audio(self, channel: int, ssrc: int, timestamp: int, pcm: bytes, sent: float) -> None:
        """The notice as it was sent, into the channel of the flow it replaced."""
        if not (self.declined or self.ended):
            self.timeline.put(channel, ssrc, timestamp, pcm, sent)

    def offset_s(self, t: float) -> float:
        """Seconds into the kept recording of monotonic instant `t`."""
        return max(0, self.timeline.frame_at(t) - self.keep_from) / self.rate

    def flush(self, until: int, checked: int | None = None) -> None:
        """Hand the audio up to frame `until` that is listened to to the store thread's key
        detectors, and move the timeline's audio to the spool (or hold it for the spool): up to
        `until`, or while a pause code is listened for, only what was `checked` for keys, so that
        a pause keyed in-band hides everything from its key on."""
        holding = checked is not None and self.listen_whole_call and self.listening != [None, None]
        listened = self._listened(until)
        if listened:
            self.line.worker.submit(functools.partial(self.hear, listened))
        if holding:
            until = min(until, checked)
        pcm = self.timeline.take(until)
        start = until - len(pcm) // 4
        if start < self.keep_from:
            pcm = pcm[4 * (min(self.keep_from, until) - start):]
        if not pcm:
            return
        samples = array.array("h", pcm)
        for channel, meter in enumerate(self.line.meters):
            meter.add(samples[channel::CHANNELS].tobytes())
        with self.lock:
            if self.spool is not None:
                self.spool.append(pcm)
            else:
                self.pending.append(pcm)
        if self.live:
            for tap in self.taps:
                tap.offer(pcm)

    def _listened(self, until: int) -> list:
        """Each listened channel's audio up to frame `until`, read before `take` (which writes a
        pause as silence, and the code that ends it must be heard): (channel, first frame, s16le,
        whether it is the last)."""
        parts = []
        for channel, start in enumerate(self.listening):
            if start is None:
                continue
            end = until if self.listen_whole_call else \
                min(until, self.keep_from + round(self.rules.optout_until_s * self.rate))
            last = self.ended or end < until or self.sides[channel] in self.last_event
            first = max(self.timeline.taken, start)
            if end > first or last:
                parts.append((channel, first, self.timeline.peek(channel, first, end), last))
            self.listening[channel] = None if last else max(first, end)
        return parts

    def hear(self, parts: list) -> None:
        """Find the keys in listened audio (on the store thread) and queue them for the loop, the
        earliest first (a press before its echo); then move `checked` up to where no key can
        still be found that starts before it."""
        found, settled = [], []
        for channel, first, pcm, last in parts:
            end = first + len(pcm) // 2
            if self.detectors[channel] is None:
                if not pcm:
                    settled.append(end)
                    continue
                self.detectors[channel] = (first, DtmfDetector(self.rate))
            base, detector = self.detectors[channel]
            digits, step = [], 2 * round(HEAR_S * self.rate)
            for at in range(0, len(pcm), step):
                digits += detector.feed(pcm[at:at + step])
                time.sleep(0)       # hands the GIL to the loop if it waits, rather than after 5 ms
            digits += detector.flush() if last else []
            found += [(base + digit.start, self.sides[channel], digit.key) for digit in digits]
            settled.append(end if last else base + detector.settled)
        self.heard.extend(sorted(found))
        # After the keys: whoever sees this frame finds every key before it queued.
        self.checked = max(self.checked, min(settled, default=self.checked))

    @property
    def call_id(self) -> int | None:
        """The call's id, once its row is written."""
        return self.row.id

    def attach(self, spool: SpoolWriter) -> None:
        """The store thread made the spool: hand over the audio that waited for it."""
        with self.lock:
            spool.append(b"".join(self.pending))
            self.pending.clear()
            self.spool = spool


class SipLine:
    """The calls of one SIP trunk in the store: rows, spools, keys, pauses, finalisation."""

    def __init__(self, config: SipTrunkConfig, desk: Desk, call_later):
        self.config = config
        self.call_later = call_later            # the relay loop's timer: (delay, fn, *args) -> handle
        self.desk = desk
        self.selection = selection_for(config)
        # Encoded now: encoders are too slow for the relay's loop (G.711's first builds a 64 KiB table).
        self.notice, self.notice_sound = self._notice(config)
        self.beep = self._beep(config)
        self.active: list[CallRecording] = []
        self.meters = (LevelMeter(), LevelMeter())     # what the callers' and the callees' sides say
        # Spools, key detection and hand-overs to the store, off the relay's loop.
        self.worker = Worker(f"sip-store-{config.name}")
        self._spools = 0

    def apply(self, config: SipTrunkConfig) -> None:
        """New call rules (notice, purpose, opt-out, pause), from the next call on."""
        self.notice, self.notice_sound = self._notice(config)
        self.beep = self._beep(config)
        self.config = config
        self.selection = selection_for(config, self.selection)

    @staticmethod
    def _notice(config: SipTrunkConfig) -> tuple[Notice, codecs.Sound]:
        """The trunk's notice, and as it is played (at both rates, in every codec the relay can
        encode), made off the relay's loop."""
        notice = load_notice(config.notice, codecs.NARROWBAND)
        return notice, codecs.sound(lambda rate: notice.pcm if rate == notice.rate else load_notice(config.notice, rate).pcm)

    @staticmethod
    def _beep(config: SipTrunkConfig) -> codecs.Sound:
        """The trunk's beep (`outgoing = "beep"`) as it is played, made off the relay's loop."""
        return codecs.sound(lambda rate: beep_tone(config, rate).pcm)

    # -- the store thread -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the store thread."""
        self.worker.start()

    def stop(self) -> None:
        """Run what is queued, close the calls whose last audio was still being listened to (the
        relay's loop has stopped), then end the store thread (one that died has nothing to run:
        what it left is recovered at the next start)."""
        while self.worker.busy and self.worker.is_alive():
            time.sleep(0.01)
        for recording in [r for r in self.active if r.ended]:
            self._act_on_heard(recording)
            self._close(recording)
        self.worker.close()

    @property
    def idle(self) -> bool:
        """No call being recorded and nothing queued for the store."""
        return not self.active and not self.worker.busy

    # -- events from the relay (its loop's thread) ------------------------------------------------

    def answered(self, facts: CallFacts, event_types, notice_possible: bool,
                 rate: int = codecs.NARROWBAND) -> CallRecording:
        """A call was answered: record it at `rate` from now (or from the notice's end).
        `notice_possible`: the notice can be sent in a codec of the call. The recording's
        `play_notice` says whether the relay is to play it."""
        rules = CallRules(self.config, facts.direction, lead_in_s=0.0, notice_s=self.notice.duration_s,
                          notice_possible=notice_possible, objected=self.desk.objected(facts.number),
                          selection=self.selection, when=local_from_mono(facts.answered))
        recording = CallRecording(self, facts, event_types, rules, rate)
        started = rules.started(facts.answered)
        recording.play_notice = any(isinstance(c, callrules.PlayNotice) for c in started)
        until = rules.keys_matter_until_s()
        if until is not None:
            # In-band keys are listened for where they mean something: a pause code comes at any
            # time from either side, the opt-out from the outside party. The notice replaces what
            # the other side sends until it ends: nothing to hear there meanwhile.
            outside = recording.channel_from(facts.outside_side)
            recording.listen_whole_call = until == math.inf
            for channel in (0, 1) if recording.listen_whole_call else (outside,):
                recording.listening[channel] = NEVER if rules.notice and channel != outside else 0
        self.active.append(recording)
        self._spools += 1
        spool_name = f"{self.config.name}-{int(wall_from_mono(facts.answered) * 1000)}-{self._spools}.wav"
        config = self.config
        recording.row.insert(
            line=config.name, direction=facts.direction, number=facts.number,
            started_at=iso_from_mono(facts.started), answered_at=iso_from_mono(facts.answered),
            recording_started_at=iso_from_mono(facts.answered) if rules.recording else None,
            purpose=config.purpose, state="recording", spool=f"{SPOOL_DIR}/{spool_name}",
            sample_rate=rate, channels=CHANNELS, clock_synced=clock_synchronised())
        # Making a file waits for the disk: on the store thread, never on the relay's loop.
        self.worker.submit(lambda: recording.attach(self.desk.spool(spool_name, rate, CHANNELS)))
        # Never the number: logs leave the data folder and erasure cannot reach them.
        log.info("sip trunk %s: %s call answered", config.name, facts.direction)
        self._carry_out(recording, [c for c in started if not isinstance(c, callrules.PlayNotice)])
        return recording

    def notice_started(self, recording: CallRecording, t: float) -> None:
        """The notice began playing to the outside party at `t`."""
        recording.row.update(notice_played_at=iso_from_mono(t), notice_sha256=self.notice.sha256)

    def notice_ended(self, recording: CallRecording, t: float) -> None:
        """The notice has been played: with `record_from = notice_end`, recording starts now."""
        recording.listening = [recording.timeline.frame_at(t) if start == NEVER else start
                               for start in recording.listening]
        self._carry_out(recording, recording.rules.notice_ended(t))

    def flush(self, now: float) -> None:
        """Act on the keys heard in-band since the last tick; move each call's audio from its
        timeline toward its spool, a little behind real time; close the ended calls whose last
        audio has been listened to."""
        for recording in list(self.active):
            checked = recording.checked         # read before the keys, which are queued before it
            all_heard = self._act_on_heard(recording)
            if recording.ended:
                if all_heard or recording.declined:
                    self._close(recording)
            elif not recording.declined:
                if not recording.live:
                    recording.live = recording.rules.listenable(recording.offset_s(self._heard_to(recording, now)))
                recording.flush(recording.timeline.frame_at(now - JITTER_S), checked)

    @staticmethod
    def _heard_to(recording: CallRecording, now: float) -> float:
        """Up to when (monotonic) the call's keys are known: what leaves the timeline now, or,
        while its audio is listened to for keys, what the store thread has listened to."""
        until = now - JITTER_S
        if recording.listening != [None, None]:
            until = min(until, recording.timeline.start + recording.checked / recording.rate)
        return until

    def _act_on_heard(self, recording: CallRecording) -> bool:
        """Take the keys found in-band, each press once; True when the call's last audio has been
        listened to."""
        while recording.heard:
            heard = recording.heard.popleft()
            if heard is None:
                return True
            frame, side, key = heard
            t = recording.timeline.start + frame / recording.rate
            pressed = recording.key_times.get((recording.sides[1 - recording.channel_from(side)], key))
            if recording.declined or side in recording.last_event:
                continue            # this side sends its keys as telephone events: the tone is the same press
            if pressed is not None and abs(pressed - t) <= ECHO_S:
                continue            # the other side's press, heard again in this channel
            self.key(recording, side, key, t)
        return False

    def key(self, recording: CallRecording, side: str, key: str, t: float) -> None:
        """A key from `side` pressed at `t` (an RFC 4733 event, or a tone heard in-band)."""
        recording.key_times[side, key] = t
        self._carry_out(recording, recording.rules.key(key, t, recording.offset_s(t),
                                                       from_outside=side == recording.facts.outside_side))

    def _tick_rules(self, recording: CallRecording) -> None:
        """A deadline of the call's rules has come (a pause left on, a beep due)."""
        recording.pause_timer = None
        if not recording.ended:
            self._carry_out(recording, recording.rules.tick(time.monotonic()))

    def _carry_out(self, recording: CallRecording, commands: list) -> None:
        """Do what the call's rules decided, on the call's timeline and in the store."""
        timeline = recording.timeline
        for command in commands:
            if isinstance(command, callrules.StartRecording):
                recording.keep_from = timeline.frame_at(command.t)
                recording.row.update(recording_started_at=iso_from_mono(command.t))
            elif isinstance(command, (callrules.Pause, callrules.Resume)):
                t = max(command.t, timeline.start + timeline.taken / timeline.rate)  # what left for the spool stays
                pause = isinstance(command, callrules.Pause)
                (timeline.mute if pause else timeline.unmute)(timeline.frame_at(t))
                if pause:
                    recording.row.pause(recording.offset_s(t), command.reason)
                else:
                    recording.row.resume(recording.offset_s(t))
                log.info("sip trunk %s: a call %s", self.config.name, "paused" if pause else "resumed")
            elif isinstance(command, callrules.KeepKey):
                recording.row.key(command.offset_s, command.key)
            elif isinstance(command, callrules.Beep) and recording.play_beep is not None:
                recording.play_beep()
            elif isinstance(command, callrules.Decline):
                recording.close_taps(discard=True)
                self.active.remove(recording)
                log.info("sip trunk %s: %s", self.config.name, callrules.DECLINED[command.reason])
                # After the store thread's step that made the spool.
                reason = command.reason
                keep_number = self.config.keep_declined_number and reason != "private"
                self.worker.submit(lambda: recording.row.decline(recording.spool, keep_number, reason))
            elif isinstance(command, callrules.Finish):
                self._finish(recording, command)
        if recording.pause_timer is not None:
            recording.pause_timer.cancel()
            recording.pause_timer = None
        if (deadline := recording.rules.deadline()) is not None and not recording.rules.ended:
            recording.pause_timer = self.call_later(max(0.0, deadline - time.monotonic()), self._tick_rules, recording)

    def ended(self, recording: CallRecording, t: float, reason: str, interrupted: bool = False) -> None:
        """The call ended at `t`: take the rest of its audio, then finalise it; when in-band keys
        are listened for, once that last audio has been listened to (a tick later)."""
        if recording.ended:
            return
        recording.ended = True
        recording.closing = (t, reason, interrupted)
        if recording.declined or interrupted:
            recording.listening = [None, None]      # no tick will act on what is heard now
        if recording.listening == [None, None]:
            self._close(recording)
            return
        checked = recording.checked         # as a tick does: the keys before it first
        self._act_on_heard(recording)
        recording.flush(recording.timeline.frame_at(t), checked)
        self.worker.submit(lambda: recording.heard.append(None))

    def _close(self, recording: CallRecording) -> None:
        """Finalise an ended call (or just note its end when declined)."""
        t, reason, interrupted = recording.closing
        recording.end_reason = reason
        self._carry_out(recording, recording.rules.hung_up(t, interrupted))

    def _finish(self, recording: CallRecording, finish: callrules.Finish) -> None:
        ended_at, reason = iso_from_mono(finish.t), recording.end_reason
        if finish.declined:
            recording.row.update(ended_at=ended_at, end_reason=reason)
            return
        recording.flush(recording.timeline.frame_at(finish.t))
        recording.close_taps()
        self.active.remove(recording)
        # After the store thread's steps: the spool exists and has every piece of audio.
        self.worker.submit(lambda: recording.row.finish(recording.spool, finish.state, ended_at=ended_at, end_reason=reason))
        log.info("sip trunk %s: call ended (%s)", self.config.name, reason)

    # -- the control channel (on the loop's thread) -------------------------------------------------

    def recording_of(self, call_id: int | None) -> CallRecording:
        """The call in progress with that id (or the only one). Raises ControlError."""
        calls = [r for r in self.active if not r.ended and not r.declined
                 and (call_id is None or r.call_id == call_id)]
        if len(calls) != 1:
            raise refused(f"sip trunk {self.config.name}", "several-calls" if calls else "not-in-progress")
        return calls[0]

    def screen_pause(self, pause: bool, by: str, call_id: int | None) -> dict:
        """The screen's pause or resume button, as the pause code does."""
        recording = self.recording_of(call_id)
        if recording.rules.paused == pause:
            raise refused(f"sip trunk {self.config.name}", "already-paused" if pause else "not-paused")
        commands = recording.rules.pause_pressed(time.monotonic(), "screen")
        if not commands:
            raise refused(f"sip trunk {self.config.name}", "not-recorded")
        log.info("sip trunk %s: %s from the screen by %s", self.config.name, "pause" if pause else "resume", by)
        self._carry_out(recording, commands)
        return {"call_id": recording.call_id, "paused": recording.rules.paused}

    def listen(self, by: str, call_id: int | None, limit: int, periods: int) -> tuple[Tap, dict]:
        """A live listener of a call in progress: both sides as recorded (stereo), from when it
        is known to be kept, silence while paused, until it ends."""
        recording = self.recording_of(call_id)
        if sum(not tap.closed.is_set() for tap in recording.taps) >= limit:
            raise refused(f"sip trunk {self.config.name}", "listeners-full", limit=limit)
        tap = Tap(periods)
        recording.taps = (*[t for t in recording.taps if not t.closed.is_set()], tap)
        log.info("sip trunk %s: %s listens live to a call", self.config.name, by)
        return tap, {"call_id": recording.call_id, "rate": recording.rate, "channels": CHANNELS}

    def missed(self, facts: CallFacts, t: float, reason: str) -> None:
        """A call that was never answered: a `missed` row, no recording."""
        config = self.config
        self.desk.missed(line=config.name, direction=facts.direction, number=facts.number,
                         started_at=iso_from_mono(facts.started), ended_at=iso_from_mono(t), purpose=config.purpose,
                         end_reason=reason, clock_synced=clock_synchronised())
        log.info("sip trunk %s: %s call not answered (%s)", config.name, facts.direction, reason)
