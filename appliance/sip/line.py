"""The recording side of a SIP trunk: each answered call's two directions into one stereo spool
(caller left, callee right), then the archive and the catalogue, as for an analog line.

The relay's event loop must never wait on a disk, so it only places audio on the call's timeline
and queues the rest: a store thread per trunk creates rows and spools, notes keys and pauses, and
hands ended calls to the shared finaliser. The caller's choices work as on an analog line: the
opt-out key (from the outside party, within its window after the notice) destroys what was
recorded; the pause code writes silence until it is keyed again or `pause_max_s` passes.
"""

import logging
import queue
import threading
import time
from dataclasses import dataclass

from appliance.archive import SPOOL_DIR, discard_declined, finalise
from appliance.catalogue import Catalogue
from appliance.clock import clock_synchronised, iso_from_mono, wall_from_mono
from appliance.config import RecorderConfig, SipTrunkConfig
from appliance.notice import load_notice
from appliance.sip import g711
from appliance.sip.media import parse_rtp
from appliance.sip.stereo import RATE, Timeline
from appliance.spool import SpoolWriter

log = logging.getLogger(__name__)

CHANNELS = 2
JITTER_S = 0.2          # audio is taken off the timeline this far behind real time
EVENT_KEYS = "0123456789*#ABCD"     # RFC 4733 events 0-15


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
        self.ended = False

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

    def flush(self, until: int) -> None:
        """Move the timeline's audio up to frame `until` to the spool (or hold it for the spool)."""
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
        """Run what is queued, then end the store thread."""
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
        if recording.keep_from > recording.timeline.frame_at(t):
            recording.keep_from = recording.timeline.frame_at(t)
            started = iso_from_mono(t)
            self.jobs.put(lambda: self.catalogue.update_call(recording.call_id, recording_started_at=started))

    def flush(self, now: float) -> None:
        """Move each call's audio from its timeline toward its spool, a little behind real time."""
        for recording in self.active:
            recording.flush(recording.timeline.frame_at(now - JITTER_S))

    def key(self, recording: CallRecording, side: str, key: str, t: float) -> None:
        """An RFC 4733 key from `side`: the pause code, the opt-out key, or a digit to note."""
        config = self.config
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
        recording.paused_since = t
        recording.timeline.mute(recording.timeline.frame_at(t))
        offset = round(recording.offset_s(t), 3)
        with_db = lambda db: db.execute("INSERT INTO pauses (call_id, start_s, reason) VALUES (?, ?, ?)",
                                        [recording.call_id, offset, reason])
        self.jobs.put(lambda: self._in_transaction(with_db))
        recording.pause_timer = self.call_later(self.config.pause_max_s, self.resume_left_on, recording)
        log.info("sip trunk %s: a call paused", self.config.name)

    def _resume(self, recording: CallRecording, t: float) -> None:
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
        """The call ended at `t`: take the rest of its audio, then finalise it."""
        if recording.ended:
            return
        if recording.paused_since is not None:
            self._resume(recording, t)          # closes the pause at the end of the recording
        recording.ended = True
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
