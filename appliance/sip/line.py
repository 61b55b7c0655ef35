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

import functools
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

from appliance.store.archive import SPOOL_DIR, discard_declined, finalise
from appliance.store.catalogue import Catalogue
from appliance.clock import clock_synchronised, iso_from_mono, wall_from_mono
from appliance.config import RecorderConfig, SipTrunkConfig
from appliance.dtmf import DtmfDetector
from appliance.notice import load_notice
from appliance.sip import g711
from appliance.sip.media import parse_rtp
from appliance.sip.stereo import RATE, Timeline
from appliance.store.spool import SpoolWriter

log = logging.getLogger(__name__)

CHANNELS = 2
JITTER_S = 0.2          # audio is taken off the timeline this far behind real time
EVENT_KEYS = "0123456789*#ABCD"     # RFC 4733 events 0-15
ECHO_S = 0.25           # the same key in the other channel this close to a press is that press
NEVER = 1 << 62         # a frame no call reaches
HEAR_BYTES = 320        # 20 ms: the detectors let the relay's loop run between pieces this long


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
    """One answered call being recorded: its timeline, its spool once the store thread made it,
    the keys heard, the pause and the decline."""

    def __init__(self, line: "SipLine", facts: CallFacts, event_types):
        self.line = line
        self.facts = facts
        self.event_types = event_types          # () -> the telephone-event payload types in use
        self.timeline = Timeline(facts.answered)
        self.lock = threading.Lock()
        self.spool: SpoolWriter | None = None
        self.pending: list[bytes] = []
        self.call_id: int | None = None
        self.keep_from = 0                      # frames before this are not kept (record_from)
        self.optout_until_s = 0.0
        self.declined = False
        self.paused_since: float | None = None
        self.pause_timer = None
        self.keys = ""
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
        if packet.payload_type in g711.LAWS:
            self.timeline.put(self.channel_from(side), packet.ssrc, packet.timestamp,
                              g711.decode(packet.payload, packet.payload_type), arrival)
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
        return max(0, self.timeline.frame_at(t) - self.keep_from) / RATE

    def flush(self, until: int, checked: int | None = None) -> None:
        """Hand the audio up to frame `until` that is listened to to the store thread's key
        detectors, and move the timeline's audio to the spool (or hold it for the spool): up to
        `until`, or while a pause code is listened for, only what was `checked` for keys, so that
        a pause keyed in-band hides everything from its key on."""
        holding = checked is not None and self.listen_whole_call and self.listening != [None, None]
        listened = self._listened(until)
        if listened:
            self.line.jobs.put(functools.partial(self.hear, listened))
        if holding:
            until = min(until, checked)
        pcm = self.timeline.take(until)
        start = until - len(pcm) // 4
        if start < self.keep_from:
            pcm = pcm[4 * (min(self.keep_from, until) - start):]
        if not pcm:
            return
        with self.lock:
            if self.spool is not None:
                self.spool.append(pcm)
            else:
                self.pending.append(pcm)

    def _listened(self, until: int) -> list:
        """Each listened channel's audio up to frame `until`, read before `take` (which writes a
        pause as silence, and the code that ends it must be heard): (channel, first frame, s16le,
        whether it is the last)."""
        parts = []
        for channel, start in enumerate(self.listening):
            if start is None:
                continue
            end = until if self.listen_whole_call else \
                min(until, self.keep_from + round(self.optout_until_s * RATE))
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
                self.detectors[channel] = (first, DtmfDetector(RATE))
            base, detector = self.detectors[channel]
            digits = []
            for at in range(0, len(pcm), HEAR_BYTES):
                digits += detector.feed(pcm[at:at + HEAR_BYTES])
                time.sleep(0)       # hands the GIL to the loop if it waits, rather than after 5 ms
            digits += detector.flush() if last else []
            found += [(base + digit.start, self.sides[channel], digit.key) for digit in digits]
            settled.append(end if last else base + detector.settled)
        self.heard.extend(sorted(found))
        # After the keys: whoever sees this frame finds every key before it queued.
        self.checked = max(self.checked, min(settled, default=self.checked))

    def attach(self, spool: SpoolWriter, call_id: int) -> None:
        """The store thread made the spool and the row: hand over what waited for them."""
        with self.lock:
            spool.append(b"".join(self.pending))
            self.pending.clear()
            self.spool, self.call_id = spool, call_id


class SipLine:
    """The calls of one SIP trunk in the store: rows, spools, keys, pauses, finalisation."""

    def __init__(self, config: SipTrunkConfig, settings: RecorderConfig, catalogue: Catalogue,
                 finaliser, call_later, on_finished=None):
        self.config = config
        self.call_later = call_later            # the relay loop's timer: (delay, fn, *args) -> handle
        self.settings = settings
        self.catalogue = catalogue
        self.finaliser = finaliser
        self.on_finished = on_finished or (lambda row: None)
        self.notice = load_notice(config.notice, RATE)
        # Encoded now: the first encoding builds a 64 KiB table, too slow for the relay's loop.
        self.notice_codes = {law: g711.encode(self.notice.pcm, law) for law in g711.LAWS}
        self.active: list[CallRecording] = []
        self.jobs: "queue.Queue" = queue.Queue()
        self._spools = 0
        self._thread = threading.Thread(target=self._run, name=f"sip-store-{config.name}", daemon=True)

    def apply(self, config: SipTrunkConfig) -> None:
        """New call rules (notice, purpose, opt-out, pause), from the next call on."""
        notice = load_notice(config.notice, RATE)
        self.notice_codes = {law: g711.encode(notice.pcm, law) for law in g711.LAWS}
        self.notice, self.config = notice, config

    # -- the store thread -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the store thread."""
        self._thread.start()

    def stop(self) -> None:
        """Run what is queued, close the calls whose last audio was still being listened to (the
        relay's loop has stopped), then end the store thread."""
        self.jobs.join()
        for recording in [r for r in self.active if r.ended]:
            self._act_on_heard(recording)
            self._close(recording)
        self.jobs.put(None)
        self._thread.join()

    @property
    def idle(self) -> bool:
        """No call being recorded and nothing queued for the store."""
        return not self.active and self.jobs.unfinished_tasks == 0

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                job()
            except Exception:
                # A failed step leaves its spool in place: it is recovered at the next start.
                log.exception("sip trunk %s: a store step failed", self.config.name)
            finally:
                self.jobs.task_done()
        self.jobs.task_done()

    # -- events from the relay (its loop's thread) ------------------------------------------------

    def wants_notice(self, direction: str) -> bool:
        """Whether a call in `direction` gets the notice, played to the outside party."""
        return self.config.notice_incoming if direction == "incoming" else self.config.notice_outgoing

    def answered(self, facts: CallFacts, event_types, with_notice: bool) -> CallRecording:
        """A call was answered: record it from now (or from the notice's end)."""
        recording = CallRecording(self, facts, event_types)
        wait_for_notice = with_notice and self.config.record_from == "notice_end"
        if wait_for_notice:
            recording.keep_from = 1 << 62           # until the notice ends
        if with_notice:
            lead = 0.0 if wait_for_notice else self.notice.duration_s
            recording.optout_until_s = lead + self.config.optout_window_s
        if self.config.pause_code is not None or (self.config.optout_digit is not None and recording.optout_until_s):
            # In-band keys are listened for where they mean something: a pause code comes at any
            # time from either side, the opt-out from the outside party. The notice replaces what
            # the other side sends until it ends: nothing to hear there meanwhile.
            outside = recording.channel_from(facts.outside_side)
            recording.listen_whole_call = self.config.pause_code is not None
            for channel in (0, 1) if recording.listen_whole_call else (outside,):
                recording.listening[channel] = NEVER if with_notice and channel != outside else 0
        self.active.append(recording)
        self._spools += 1
        spool_name = f"{self.config.name}-{int(wall_from_mono(facts.answered) * 1000)}-{self._spools}.wav"
        config, settings = self.config, self.settings

        def job():
            spool = SpoolWriter(settings.data_dir / SPOOL_DIR / spool_name, RATE, channels=CHANNELS,
                                flush_interval=settings.flush_interval_s)
            call_id = self.catalogue.add_call(
                line=config.name, direction=facts.direction, number=facts.number,
                started_at=iso_from_mono(facts.started), answered_at=iso_from_mono(facts.answered),
                recording_started_at=None if wait_for_notice else iso_from_mono(facts.answered),
                purpose=config.purpose, state="recording", spool=f"{SPOOL_DIR}/{spool_name}",
                sample_rate=RATE, channels=CHANNELS, clock_synced=clock_synchronised())
            recording.attach(spool, call_id)
            log.info("sip trunk %s: %s call %s from %s answered", config.name, facts.direction, call_id,
                     facts.number or "an unknown number")
        self.jobs.put(job)
        return recording

    def notice_started(self, recording: CallRecording, t: float) -> None:
        """The notice began playing to the outside party at `t`."""
        played_at, sha = iso_from_mono(t), self.notice.sha256
        self.jobs.put(lambda: self.catalogue.update_call(recording.call_id, notice_played_at=played_at,
                                                         notice_sha256=sha))

    def notice_ended(self, recording: CallRecording, t: float) -> None:
        """The notice has been played: with `record_from = notice_end`, recording starts now."""
        recording.listening = [recording.timeline.frame_at(t) if start == NEVER else start
                               for start in recording.listening]
        if recording.keep_from > recording.timeline.frame_at(t):
            recording.keep_from = recording.timeline.frame_at(t)
            started = iso_from_mono(t)
            self.jobs.put(lambda: self.catalogue.update_call(recording.call_id, recording_started_at=started))

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
                recording.flush(recording.timeline.frame_at(now - JITTER_S), checked)

    def _act_on_heard(self, recording: CallRecording) -> bool:
        """Take the keys found in-band, each press once; True when the call's last audio has been
        listened to."""
        while recording.heard:
            heard = recording.heard.popleft()
            if heard is None:
                return True
            frame, side, key = heard
            t = recording.timeline.start + frame / RATE
            pressed = recording.key_times.get((recording.sides[1 - recording.channel_from(side)], key))
            if recording.declined or side in recording.last_event:
                continue            # this side sends its keys as telephone events: the tone is the same press
            if pressed is not None and abs(pressed - t) <= ECHO_S:
                continue            # the other side's press, heard again in this channel
            self.key(recording, side, key, t)
        return False

    def key(self, recording: CallRecording, side: str, key: str, t: float) -> None:
        """A key from `side` pressed at `t` (an RFC 4733 event, or a tone heard in-band): the pause
        code, the opt-out key, or a digit to note."""
        config = self.config
        recording.key_times[side, key] = t
        recording.keys = (recording.keys + key)[-4:]
        if config.pause_code is not None and recording.keys.endswith(config.pause_code):
            recording.keys = ""
            self._resume(recording, t) if recording.paused_since is not None else self._pause(recording, t)
            return
        if recording.paused_since is not None:
            return                  # keys typed during a pause (a card number) are not kept
        offset = recording.offset_s(t)
        self.jobs.put(lambda: self.catalogue.add_digit(recording.call_id, offset, key))
        if (key == config.optout_digit and side == recording.facts.outside_side
                and recording.optout_until_s and offset <= recording.optout_until_s):
            self._decline(recording)

    def _pause(self, recording: CallRecording, t: float, reason: str = "dtmf") -> None:
        t = max(t, recording.timeline.start + recording.timeline.taken / RATE)  # what left for the spool stays
        recording.paused_since = t
        recording.timeline.mute(recording.timeline.frame_at(t))
        offset = round(recording.offset_s(t), 3)
        with_db = lambda db: db.execute("INSERT INTO pauses (call_id, start_s, reason) VALUES (?, ?, ?)",
                                        [recording.call_id, offset, reason])
        self.jobs.put(lambda: self._in_transaction(with_db))
        recording.pause_timer = self.call_later(self.config.pause_max_s, self.resume_left_on, recording)
        log.info("sip trunk %s: a call paused", self.config.name)

    def _resume(self, recording: CallRecording, t: float) -> None:
        t = max(t, recording.timeline.start + recording.timeline.taken / RATE)  # silence already written
        recording.paused_since = None
        if recording.pause_timer is not None:
            recording.pause_timer.cancel()
            recording.pause_timer = None
        recording.timeline.unmute(recording.timeline.frame_at(t))
        offset = round(recording.offset_s(t), 3)
        with_db = lambda db: db.execute("UPDATE pauses SET end_s = ? WHERE call_id = ? AND end_s IS NULL",
                                        [offset, recording.call_id])
        self.jobs.put(lambda: self._in_transaction(with_db))
        log.info("sip trunk %s: a call resumed", self.config.name)

    def resume_left_on(self, recording: CallRecording) -> None:
        """A pause reached `pause_max_s`: resume recording."""
        if recording.paused_since is not None and not recording.ended:
            log.warning("sip trunk %s: pause of call %s left on; resuming", self.config.name, recording.call_id)
            self._resume(recording, time.monotonic())

    def _in_transaction(self, step) -> None:
        with self.catalogue.transaction() as db:
            step(db)

    def _decline(self, recording: CallRecording) -> None:
        """The outside party pressed the opt-out key: stop, and destroy what was recorded."""
        recording.declined = True
        self.active.remove(recording)
        keep_number = self.config.keep_declined_number
        log.info("sip trunk %s: the caller declined recording", self.config.name)
        self.jobs.put(lambda: discard_declined(self.catalogue, recording.call_id, recording.spool, keep_number))

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
        self.jobs.put(lambda: recording.heard.append(None))

    def _close(self, recording: CallRecording) -> None:
        """Finalise an ended call (or just note its end when declined)."""
        t, reason, interrupted = recording.closing
        if recording.paused_since is not None:
            self._resume(recording, t)          # closes the pause at the end of the recording
        ended_at = iso_from_mono(t)
        if recording.declined:
            self.jobs.put(lambda: self.catalogue.update_call(recording.call_id, ended_at=ended_at,
                                                             end_reason=reason))
            return
        recording.flush(recording.timeline.frame_at(t))
        self.active.remove(recording)
        state = "interrupted" if interrupted else "complete"
        settings = self.settings

        def finish():
            recording.spool.close()
            self.on_finished(finalise(self.catalogue, settings.data_dir, recording.call_id, state,
                                      settings.format, settings.opus_bitrate, ended_at=ended_at,
                                      end_reason=reason))
        self.jobs.put(lambda: self.finaliser.submit(finish))
        log.info("sip trunk %s: call ended (%s)", self.config.name, reason)

    def missed(self, facts: CallFacts, t: float, reason: str) -> None:
        """A call that was never answered: a `missed` row, no recording."""
        config = self.config

        def job():
            call_id = self.catalogue.add_call(
                line=config.name, direction=facts.direction, number=facts.number,
                started_at=iso_from_mono(facts.started), ended_at=iso_from_mono(t), purpose=config.purpose,
                state="missed", end_reason=reason, clock_synced=clock_synchronised())
            self.finaliser.submit(lambda: self.on_finished(self.catalogue.get_call(call_id)))
        self.jobs.put(job)
        log.info("sip trunk %s: %s call not answered (%s)", config.name, facts.direction, reason)
