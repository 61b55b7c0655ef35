"""An analog line: the hook and ring inputs, the call state machine, the notice, capture and spool
of one tapped line, driven by one controller thread.
"""

import logging
import math
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import alsaaudio
from gpiozero import LED

from appliance import callrules
from appliance.analog import callstate
from appliance.callrules import CallRules
from appliance.analog.answer import Answer, AnswerDetector
from appliance.analog.capture import Capture
from appliance.analog.fsk import CallerIdMessage, FskReceiver
from appliance.analog.hook import Debouncer, LineInputs, RingMonitor
from appliance.analog.modem import CallerId, CallerIdModem, Ring
from appliance.analog.playback import play
from appliance.beep import beep_tone
from appliance.clock import clock_synchronised, iso_from_mono, local_from_mono, wall_from_mono
from appliance.config import LineConfig, RecorderConfig
from appliance.control import Tap, refused
from appliance.dtmf import ClipDecoder, DtmfDetector
from appliance.notice import load_notice
from appliance.selection import selection_for
from appliance.store.archive import SPOOL_DIR
from appliance.store.callrow import CallRow, Desk
from appliance.store.spool import SpoolWriter

log = logging.getLogger(__name__)

WIRING = ("hook_pin", "hook_active", "ring_pin", "ring_active", "capture", "playback", "modem", "modem_commands",
          "caller_id", "pause_button_pin", "agreement_button_pin", "private_button_pin", "recording_led_pin")
TICK_S = 0.25  # longest sleep of a line's thread with nothing due
BUTTON_SETTLE_S = 0.03
CALLER_ID_IN_CALL_S = 6.0  # caller ID may come just after the answer; later, it is a waiting call's
CALLER_ID_LEAD_S = 10.0  # caller ID may come before the first ring (DTMF CLIP, FSK after DT-AS), not earlier


@dataclass(frozen=True)
class Heard:
    """A DTMF key heard `offset_s` seconds into the recording of `call`."""

    call: "ActiveCall"
    key: str
    offset_s: float


class Listener(threading.Thread):
    """Runs a detector (DTMF digits, FSK caller ID) on audio off the capture thread, and reports
    each thing it finds. With a `budget`, only on that many samples: the window in which digits
    mean something (the number dialled, the caller's opt-out), so that a long call costs no
    detection time after it."""

    def __init__(self, name: str, detector, budget: int | None, report):
        super().__init__(name=name, daemon=True)
        self.detector = detector        # feed(pcm) and flush() return what was found
        self.budget = budget
        self.report = report
        self.audio: "queue.Queue[bytes | None]" = queue.Queue()
        self._queued = 0

    def append(self, pcm: bytes) -> None:
        """Take a period of audio (cheap: the capture thread calls it)."""
        if self.budget is None:
            self.audio.put(pcm)
        elif self._queued < self.budget:
            self._queued += len(pcm) // 2
            self.audio.put(pcm)
            if self._queued >= self.budget:
                self.audio.put(None)

    def close(self) -> None:
        """No more audio is coming."""
        self.audio.put(None)

    def run(self) -> None:
        while (pcm := self.audio.get()) is not None:
            for found in self.detector.feed(pcm):
                self.report(found)
        for found in self.detector.flush():
            self.report(found)


class CallAudio:
    """A call's audio goes to its spool and, within its window, to its digit listener; while
    paused, silence of the same length goes to the spool instead, so durations stay true. Once
    the call is known to be kept (`live`), the same goes to whoever listens live (`taps`)."""

    def __init__(self, spool: SpoolWriter, listener: Listener | None):
        self.spool = spool
        self.listener = listener
        self.paused = False
        self.live = False
        self.taps: tuple[Tap, ...] = ()

    def append(self, pcm: bytes) -> None:
        """Take a period of audio."""
        kept = bytes(len(pcm)) if self.paused else pcm
        self.spool.append(kept)
        if self.listener is not None:
            self.listener.append(pcm)       # while paused, only to hear the resume code
        if self.live:
            for tap in self.taps:
                tap.offer(kept)

    def close_taps(self, discard: bool = False) -> None:
        """End every live listener's stream (`discard`: the call was declined)."""
        self.live = False
        for tap in self.taps:
            tap.close(discard)


@dataclass(frozen=True)
class ScreenPause:
    """The screen's pause (`pause`) or resume button, pressed by `by` for call `call_id` (or the
    call in progress); the answer goes to `done`."""

    pause: bool
    by: str
    call_id: int | None
    done: Future


@dataclass(frozen=True)
class Answered:
    """The called party of outgoing `call` answered at `t` (monotonic), as heard in the line audio."""

    call: "ActiveCall"
    t: float
    reason: str


@dataclass(frozen=True)
class NoticePlayed:
    """The notice of `call` played from `started` to `ended` (monotonic)."""

    call: "ActiveCall"
    started: float
    ended: float


@dataclass
class ActiveCall:
    """What the line controller keeps about the call in progress."""

    row: CallRow
    rules: CallRules
    started: float                          # monotonic: the first ring, or the off-hook
    number: str | None
    audio: CallAudio
    digits: list = field(default_factory=list)
    answer: Listener | None = None          # listens for an outgoing call's answer
    dialling: Listener | None = None        # its keys, heard before its recording starts
    recorded_from: float | None = None      # monotonic: the first kept sample, once known

    @property
    def direction(self) -> str:
        """incoming, outgoing or unknown."""
        return self.rules.direction

    @property
    def spool(self) -> SpoolWriter:
        """The call's spool writer."""
        return self.audio.spool

    @property
    def id(self) -> int | None:
        """The call's id, once its row is written."""
        return self.row.id

    @property
    def label(self) -> str:
        """How the log names the call: by its id, or by its start while its row waits to be written."""
        return f"call {self.row.id}" if self.row.id is not None else f"the call from {iso_from_mono(self.started)}"


class LineRecorder:
    """Records one analog line."""

    def __init__(self, line: LineConfig, settings: RecorderConfig, desk: Desk, pin_factory=None,
                 on_agreement=None):
        self.line = line
        self.settings = settings
        self.desk = desk
        self.period_frames = settings.sample_rate * settings.period_ms // 1000
        self.notice = load_notice(line.notice, settings.sample_rate)
        self.selection = selection_for(line)
        self.beep = beep_tone(line, settings.sample_rate)
        self.inputs = LineInputs(line.hook_pin, line.hook_active, line.ring_pin, line.ring_active,
                                 buttons={"pause": line.pause_button_pin,
                                          "agreement": line.agreement_button_pin,
                                          "private": line.private_button_pin},
                                 pin_factory=pin_factory)
        self.buttons = {name: Debouncer(BUTTON_SETTLE_S) for name in self.inputs.buttons}
        self.led = LED(line.recording_led_pin, pin_factory=pin_factory) if line.recording_led_pin is not None else None
        self.on_agreement = on_agreement
        self.private_until: float | None = None     # the private button, pressed before the off-hook
        self.last_call: ActiveCall | None = None
        self.capture = Capture(line.capture, settings.sample_rate, self.period_frames,
                               settings.preroll_s, status=self)
        self.modem = (CallerIdModem(line.modem, self.inputs.edges.put, cid_commands=tuple(line.modem_commands))
                      if line.modem else None)
        self.clip = self._caller_id_listener(line, settings.sample_rate)
        self.capture.tap = self._tap
        self.caller: CallerId | None = None     # caller ID of the ringing or current call
        self.machine = callstate.CallMachine(
            flash_max=settings.flash_max_ms / 1000,
            has_ring_detector=line.ring_pin is not None or self.modem is not None)
        self.hook = Debouncer(settings.debounce_ms / 1000, level=False)
        self.ring = RingMonitor(settings.ring_gap_s)
        self.call: ActiveCall | None = None
        self._stop = threading.Event()
        self._handling = False      # the line's thread is handling an event (see `idle`)
        self._thread = threading.Thread(target=self._run, name=f"line-{line.name}", daemon=True)

    def start(self) -> None:
        """Start capturing and watching the hook. A handset already off-hook starts a call."""
        self.capture.start()
        if self.clip is not None:
            self.clip.start()
        if self.modem is not None:
            self.modem.start()
        if self.inputs.off_hook():
            self.hook = Debouncer(self.hook.settle, level=True)
            self._perform(self.machine.already_off_hook(time.monotonic()))
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; a call in progress is finalised as interrupted."""
        self._stop.set()
        self._thread.join()
        if self.call is not None:
            self._end(time.monotonic(), interrupted=True)
        self.capture.stop()
        self.capture.join(timeout=2)
        if self.modem is not None:
            self.modem.stop()
        if self.clip is not None:
            self.clip.close()
        if self.led is not None:
            self.led.close()
        self.inputs.close()

    @property
    def idle(self) -> bool:
        """True when no call is in progress or pending on the hook."""
        # The state first: the line's thread marks itself handling before it changes the state,
        # and hands a call's end (or a missed call) to the store before it stops handling.
        return self.machine.state == "idle" and not self._handling and self.hook.deadline() is None

    # -- the line's thread --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                edge = self.inputs.edges.get(timeout=self._sleep_time())
            except queue.Empty:
                edge = None
            self._handling = True
            try:
                if isinstance(edge, Heard):
                    self._on_digit(edge)
                elif isinstance(edge, NoticePlayed):
                    self._on_notice_played(edge)
                elif isinstance(edge, Answered):
                    self._on_answered(edge)
                elif isinstance(edge, Ring):
                    self._on_ring_activity(edge.t, True)
                    self._on_ring_activity(edge.t, False)
                elif isinstance(edge, CallerId):
                    self._on_caller_id(edge)
                elif isinstance(edge, ScreenPause):
                    self._on_screen_pause(edge)
                elif edge is not None:
                    self._on_edge(edge)
                self._advance(time.monotonic())
            except Exception:
                # The line must keep recording whatever one event does wrong.
                log.exception("line %s: error while handling an event", self.line.name)
            finally:
                self._handling = False

    def _sleep_time(self) -> float:
        ring_over = self.ring.deadline() if self.machine.state == "ringing" else None
        rules = self.call.rules.deadline() if self.call is not None else None
        deadlines = [d for d in (self.hook.deadline(), self.machine.deadline(), ring_over, rules,
                                 *(b.deadline() for b in self.buttons.values())) if d is not None]
        if not deadlines:
            return TICK_S
        return min(TICK_S, max(0.0, min(deadlines) - time.monotonic()))

    def _on_edge(self, edge) -> None:
        if edge.input == "hook":
            self.hook.edge(edge.t, edge.active)
        elif edge.input in self.buttons:
            self.buttons[edge.input].edge(edge.t, edge.active)
        else:
            self._on_ring_activity(edge.t, edge.active)

    def _on_ring_activity(self, t: float, active: bool) -> None:
        """A ring detector edge, or a modem's RING: either keeps the ringing episode going."""
        if self.ring.edge(t, active):
            if self.caller is not None and t - self.caller.t > CALLER_ID_LEAD_S:
                self.caller = None          # a caller ID long before this ringing is not its own
            self._perform(self.machine.ring(t))

    def _caller_id_listener(self, line: LineConfig, rate: int) -> Listener | None:
        """A listener for caller ID in the line's audio (DTMF CLIP or FSK), if the line has it
        there rather than from a modem."""
        if line.caller_id == "dtmf":
            decoder = ClipDecoder()
            return Listener(f"clip-{line.name}", DtmfDetector(rate), None,
                            lambda digit: self._clip_key(decoder, digit.key))
        if line.caller_id.startswith("fsk-"):
            variant = line.caller_id.removeprefix("fsk-")
            receiver = FskReceiver(rate, variant, source=f"line {line.name}: FSK caller ID")
            return Listener(f"clip-{line.name}", receiver, None, self._fsk_message)
        return None

    def _tap(self, pcm: bytes) -> None:
        """A captured period (on the capture thread), recorded or not: for the answer and dialling
        listeners of an outgoing call, and for the caller-ID listener while no call is in
        progress or in the first seconds of an incoming call that has no number yet (some
        exchanges send DTMF CLIP just after the answer). Later in a call, a caller ID is a
        waiting call's: another caller's, which must not rename this one."""
        call = self.call
        if call is not None:
            for listener in (call.answer, call.dialling):
                if listener is not None:
                    listener.append(pcm)
        if self.clip is None:
            return
        answered = call and call.rules.started_at      # None for a moment while the call starts
        if call is None or (call.direction == "incoming" and call.number is None
                            and (answered is None or time.monotonic() - answered < CALLER_ID_IN_CALL_S)):
            self.clip.append(pcm)

    def _fsk_message(self, message: CallerIdMessage) -> None:
        """An FSK caller-ID message heard on the line (on the listener's thread)."""
        self.inputs.edges.put(CallerId(time.monotonic(), message.number, message.name, message.date,
                                       message.time, (f"FSK {message.kind.upper()} {message.raw.hex(' ')}",),
                                       number_reason=message.number_reason, name_reason=message.name_reason))

    def _clip_key(self, decoder: ClipDecoder, key: str) -> None:
        """A key heard on the line, for the DTMF caller-ID decoder (on the listener's thread)."""
        if (message := decoder.key(key)) is not None:
            number, reason = message
            self.inputs.edges.put(CallerId(time.monotonic(), number, None, None, None,
                                           (f"DTMF CLIP {number or reason}",), number_reason=reason))

    def _on_caller_id(self, caller: CallerId) -> None:
        """Caller ID arrives between rings; a late one still names the call it belongs to, and
        ends its recording when the number is on the do-not-record list."""
        self.caller = caller
        call = self.call
        if call is not None and call.direction == "incoming" and caller.number:
            call.number = caller.number
            call.row.update(number=caller.number)
            if self.desk.objected(caller.number):
                self._carry_out(call, call.rules.objection())

    def _advance(self, now: float) -> None:
        while (transition := self.hook.poll(now)) is not None:
            self._perform(self.machine.hook(*transition))
        if self.machine.state == "ringing" and not self.ring.ringing(now):
            self._perform(self.machine.ring_over(now, self.ring.last_activity))
        self._perform(self.machine.tick(self.hook.settled_until(now)))
        for name, button in self.buttons.items():
            while (press := button.poll(now)) is not None:
                if press[1]:
                    self._on_button(name, press[0])
        if (call := self.call) is not None:
            self._carry_out(call, call.rules.tick(now))
            if not call.audio.live and self._listenable(call, now):
                call.audio.live = True

    def _listenable(self, call: ActiveCall, now: float) -> bool:
        """Whether the call may be heard live: its rules say so, a caller ID that could still put
        it on the do-not-record list can no longer come, and the number an outgoing call dialled
        is not on that list."""
        if not call.rules.listenable(call.spool.frames / self.settings.sample_rate):
            return False
        started = call.rules.started_at or now
        if call.direction == "incoming" and call.number is None and now - started < CALLER_ID_IN_CALL_S:
            return False
        if call.direction == "outgoing":
            if now - started < self.settings.dialling_window_s:
                return False
            return not self.desk.objected(dialled_number(call.digits))
        return True

    def _on_screen_pause(self, press: ScreenPause) -> None:
        call = self.call
        where = f"line {self.line.name}"
        if call is None or (press.call_id is not None and call.id != press.call_id):
            press.done.set_exception(refused(where, "not-in-progress"))
        elif call.rules.paused == press.pause:
            press.done.set_exception(refused(where, "already-paused" if press.pause else "not-paused"))
        elif not (commands := call.rules.pause_pressed(time.monotonic(), "screen")):
            press.done.set_exception(refused(where, "not-recorded"))
        else:
            log.info("line %s: %s from the screen by %s", self.line.name,
                     "pause" if press.pause else "resume", press.by)
            self._carry_out(call, commands)
            press.done.set_result({"call_id": call.id, "paused": call.rules.paused})

    # -- the control channel (its threads) -----------------------------------------------------------

    def screen_pause(self, pause: bool, by: str, call_id: int | None) -> dict:
        """Pause (or resume) the call in progress as the pause button does, from the screen; the
        line's thread decides. Raises ControlError when there is nothing to do."""
        press = ScreenPause(pause, by, call_id, Future())
        self.inputs.edges.put(press)
        try:
            return press.done.result(timeout=2.0)
        except TimeoutError:
            raise refused(f"line {self.line.name}", "no-answer") from None

    def listen(self, by: str, call_id: int | None, queue_s: float) -> tuple[Tap, dict]:
        """A live listener of the call in progress: its audio from when it is known to be kept
        (silence while paused) until it ends. Raises ControlError when there is no such call or
        the line has its listeners already."""
        call = self.call
        if call is None or (call_id is not None and call.id != call_id):
            raise refused(f"line {self.line.name}", "not-in-progress")
        audio = call.audio
        if sum(not tap.closed.is_set() for tap in audio.taps) >= self.settings.listeners_per_line:
            raise refused(f"line {self.line.name}", "listeners-full", limit=self.settings.listeners_per_line)
        tap = Tap(int(queue_s * 1000 / self.settings.period_ms))
        audio.taps = (*[t for t in audio.taps if not t.closed.is_set()], tap)
        if self.call is not call or call.rules.declined:
            tap.close(discard=True)         # it ended meanwhile: `_end` saw the taps before this one
        log.info("line %s: %s listens live to %s", self.line.name, by, call.label)
        return tap, {"call_id": call.id, "rate": self.settings.sample_rate, "channels": 1}

    def _on_button(self, name: str, t: float) -> None:
        call = self.call
        if name == "agreement":
            target = call if call is not None else self.last_call
            if target is not None and self.on_agreement is not None:
                self.on_agreement(target.row, f"button:{self.line.name}")
        elif name == "private" and call is None:
            self.private_until = t + self.line.private_window_s     # for the call about to start
        elif call is not None:
            rules = call.rules
            self._carry_out(call, rules.private_pressed(t) if name == "private" else rules.pause_pressed(t))

    def _show(self, call: ActiveCall | None) -> None:
        """The recording LED: lit while audio of a call is being recorded."""
        if self.led is not None:
            rules = call and call.rules
            on = rules is not None and rules.recording and not rules.paused and not rules.ended
            self.led.on() if on else self.led.off()

    def _carry_out(self, call: ActiveCall, commands: list) -> None:
        """Do what the call's rules decided, on this line's hardware and in the store."""
        position = call.spool.frames / self.settings.sample_rate       # seconds into the recording
        for command in commands:
            if isinstance(command, callrules.PlayNotice):
                threading.Thread(target=self._play_notice, args=(call,), name=f"notice-{self.line.name}",
                                 daemon=True).start()
            elif isinstance(command, callrules.ListenForAnswer):
                call.answer = self._answer_listener(call)
            elif isinstance(command, callrules.Beep):
                threading.Thread(target=self._play_beep, name=f"beep-{self.line.name}", daemon=True).start()
            elif isinstance(command, callrules.StartRecording):
                first = call.recorded_from = self.capture.start_recording(call.audio, with_preroll=False)
                call.row.update(recording_started_at=iso_from_mono(first))
            elif isinstance(command, callrules.Pause):
                call.audio.paused = True
                call.row.pause(position, command.reason)
                log.info("line %s: %s paused", self.line.name, call.label)
            elif isinstance(command, callrules.Resume):
                call.audio.paused = False
                # What was said during the pause (a card number) must not wait in RAM for the next call.
                self.capture.clear_preroll()
                call.row.resume(position)
                log.info("line %s: %s resumed", self.line.name, call.label)
            elif isinstance(command, callrules.KeepKey):
                call.digits.append((command.offset_s, command.key))
                call.row.key(command.offset_s, command.key)
            elif isinstance(command, callrules.Decline):
                call.audio.close_taps(discard=True)
                self.capture.stop_recording()
                self.capture.clear_preroll()
                log.info("line %s: %s", self.line.name, callrules.DECLINED[command.reason])
                call.row.decline(call.spool, self.line.keep_declined_number and command.reason != "private",
                                 command.reason)
            elif isinstance(command, callrules.Finish):
                self._finish(call, command)
        self._show(self.call)

    def _perform(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, callstate.Start):
                self._start(action)
            elif isinstance(action, callstate.Flash):
                log.info("line %s: hook flash of %.0f ms", self.line.name, action.length * 1000)
                self.call.row.count("flashes")
            elif isinstance(action, callstate.End):
                self._end(action.t)
            elif isinstance(action, callstate.Missed):
                log.info("line %s: missed call", self.line.name)
                caller, self.caller = self.caller, None
                self.desk.missed(line=self.line.name, direction="incoming", number=caller and caller.number,
                                 started_at=iso_from_mono(action.t), ended_at=iso_from_mono(action.until),
                                 purpose=self.line.purpose, clock_synced=clock_synchronised())

    # -- actions --------------------------------------------------------------------------------------

    def _start(self, action: callstate.Start) -> None:
        # The audio first: the spool takes the pre-roll at once; the row follows on the writer.
        settings = self.settings
        caller = self.caller if action.direction == "incoming" else None
        rules = CallRules(self.line, action.direction, lead_in_s=settings.preroll_s,
                          notice_s=self.notice.duration_s, notice_possible=not action.in_progress,
                          answer_known=False, objected=self.desk.objected(caller and caller.number),
                          selection=self.selection, when=local_from_mono(action.t))
        spool_name = f"{self.line.name}-{int(wall_from_mono(action.t) * 1000)}.wav"
        spool = self.desk.spool(spool_name, settings.sample_rate)
        started = action.ringing_since if action.ringing_since is not None else action.t
        call = ActiveCall(CallRow(self.desk), rules, started, caller and caller.number, CallAudio(spool, None))
        self._digit_listener(call)
        first_frame = call.recorded_from = self.capture.start_recording(call.audio) if rules.recording else None
        call.row.insert(line=self.line.name, direction=action.direction, number=call.number,
                        started_at=iso_from_mono(started),
                        answered_at=iso_from_mono(action.t) if action.direction == "incoming" else None,
                        recording_started_at=None if first_frame is None else iso_from_mono(first_frame),
                        purpose=self.line.purpose, state="recording", spool=f"{SPOOL_DIR}/{spool_name}",
                        sample_rate=settings.sample_rate, clock_synced=clock_synchronised())
        self.call = self.last_call = call
        log.info("line %s: %s call started", self.line.name, action.direction)
        self._carry_out(call, rules.started(action.t))
        armed, self.private_until = self.private_until, None
        if armed is not None and action.t <= armed:
            self._carry_out(call, rules.private_pressed(action.t))

    def _digit_listener(self, call: ActiveCall) -> None:
        """Start the call's listener for the keys that matter (from its first recorded sample on):
        the number an outgoing call dials; the pause code; the opt-out key. An outgoing call that
        keeps nothing before its notice (`record_from = "notice_end"`) is dialled before it: its
        listener hears the line from the off-hook, and a key before the recording is placed at
        its start."""
        rate = self.settings.sample_rate
        until = call.rules.keys_matter_until_s()
        if self.line.dtmf_whole_call:
            until = math.inf
        if call.direction == "outgoing":
            until = max(until or 0.0, self.settings.preroll_s + self.settings.dialling_window_s)
        if until is None:
            return
        budget = None if until == math.inf else int(until * rate)
        tapped, since = call.direction == "outgoing" and not call.rules.recording, time.monotonic()

        def heard(digit) -> None:
            offset = digit.start / rate
            if tapped:
                offset = 0.0 if call.recorded_from is None else max(0.0, since + offset - call.recorded_from)
            self.inputs.edges.put(Heard(call, digit.key, offset))
        listener = Listener(f"digits-{self.line.name}", DtmfDetector(rate), budget, heard)
        listener.start()
        if tapped:
            call.dialling = listener
        else:
            call.audio.listener = listener

    def _answer_listener(self, call: ActiveCall) -> Listener:
        """A listener for the called party's answer, on the line's audio from now (recorded or
        not) until the rules' fallback."""
        rate, since = self.settings.sample_rate, time.monotonic()

        def answered(answer: Answer) -> None:
            self.inputs.edges.put(Answered(call, since + answer.start / rate, answer.reason))
        listener = Listener(f"answer-{self.line.name}", AnswerDetector(rate),
                            int(self.line.answer_fallback_s * rate), answered)
        listener.start()
        return listener

    def _on_answered(self, answered: Answered) -> None:
        call = answered.call
        if call is self.call and call.answer is not None:
            call.answer.close()
            call.answer = None
            if call.rules.answer_due is None:
                return          # the fallback came first
            log.info("line %s: the called party answered (%s)", self.line.name, answered.reason)
            call.row.update(answered_at=iso_from_mono(answered.t))
            self._carry_out(call, call.rules.answered(answered.t))

    def _play_beep(self) -> None:
        """Play the warning tone into the line (its own thread: it blocks until heard)."""
        try:
            play(self.beep, self.line.playback, self.period_frames)
        except alsaaudio.ALSAAudioError as exc:
            log.error("line %s: cannot play the beep on %s: %s", self.line.name, self.line.playback, exc)

    def _on_digit(self, heard: Heard) -> None:
        call = self.call
        if call is heard.call:
            # On an outgoing call the keys heard are the shop's own dialling: never an opt-out.
            self._carry_out(call, call.rules.key(heard.key, time.monotonic(), heard.offset_s,
                                                 from_outside=call.direction != "outgoing"))

    def _play_notice(self, call: ActiveCall) -> None:
        """Play the notice into the line (its own thread: it blocks until heard), then tell the line."""
        try:
            started = play(self.notice, self.line.playback, self.period_frames)
        except alsaaudio.ALSAAudioError as exc:
            log.error("line %s: cannot play the notice on %s: %s", self.line.name,
                      self.line.playback, exc)
            return
        self.inputs.edges.put(NoticePlayed(call, started, time.monotonic()))

    def _on_notice_played(self, played: NoticePlayed) -> None:
        call = played.call
        call.row.update(notice_played_at=iso_from_mono(played.started), notice_sha256=self.notice.sha256)
        if call is self.call:
            self._carry_out(call, call.rules.notice_ended(played.ended))

    def _end(self, t: float, interrupted: bool = False) -> None:
        call, self.call, self.caller = self.call, None, None
        self.capture.stop_recording()
        call.audio.close_taps()
        for listener in (call.audio.listener, call.answer, call.dialling):
            if listener is not None:
                listener.close()
        self._carry_out(call, call.rules.hung_up(t, interrupted))

    def _finish(self, call: ActiveCall, finish: callrules.Finish) -> None:
        if finish.declined:
            # Nothing to finalise: the decline removed it. The conversation went on after it, so
            # what the pre-roll holds now is theirs too.
            self.capture.clear_preroll()
            call.row.update(ended_at=iso_from_mono(finish.t))
            return
        fields = {"ended_at": iso_from_mono(finish.t)}
        if call.direction == "outgoing" and (number := dialled_number(call.digits)):
            fields["number"] = number
            if self.desk.objected(number):
                # Known only now that the dialling is heard: what was kept goes, as at an opt-out.
                log.info("line %s: %s", self.line.name, callrules.DECLINED["objected"])
                call.row.decline(call.spool, self.line.keep_declined_number, "objected")
                if self.line.keep_declined_number:
                    call.row.update(number=number)
                call.row.update(ended_at=fields["ended_at"])
                return
        log.info("line %s: %s ended (%s)", self.line.name, call.label, finish.state)
        call.row.finish(call.spool, finish.state, **fields)

    def apply(self, line: LineConfig) -> bool:
        """Take up new settings for this line while it runs: its notice, purpose, opt-out, pause and
        notice rules apply from the next call. Its wiring (pins, sound card, modem) is kept until a
        restart: returns False when that changed."""
        wiring = {name: getattr(self.line, name) for name in WIRING}
        self.notice = load_notice(line.notice, self.settings.sample_rate)     # it may be a new file by the same name
        self.beep = beep_tone(line, self.settings.sample_rate)
        rewired = any(getattr(line, name) != value for name, value in wiring.items())
        self.line = line.model_copy(update=wiring)
        self.selection = selection_for(line, self.selection)
        return not rewired

    def snapshot(self) -> dict:
        """This line's live state for the web UI: call state, hook, levels, devices."""
        call, state = self.call, self.machine.state
        if call is not None:
            state = "paused" if call.rules.paused else "in_call"
        elif state != "ringing":
            state = "idle"
        return {"name": self.line.name, "state": state,
                "hook": "off" if self.hook.level else "on",
                "call_id": call and call.id,
                "call_started_at": call and iso_from_mono(call.started),
                "direction": call and call.direction, "number": call and call.number,
                **self.capture.meter.read(),
                "capture_connected": self.capture.connected.is_set(),
                "modem_connected": self.modem.connected.is_set() if self.modem is not None else None}

    def capture_fault(self, kind: str) -> None:
        """Count an overrun or a capture error against the call being recorded."""
        call = self.call
        if call is not None:
            call.row.count(kind)


DIGIT_GAP_S = 3.0   # a longer pause ends the number being dialled



def dialled_number(digits: list[tuple[float, str]]) -> str | None:
    """The number an outgoing call dialled: its first run of keys, each within a few seconds of
    the one before."""
    number, last = "", None
    for offset, key in digits:
        if last is not None and offset - last > DIGIT_GAP_S:
            break
        number, last = number + key, offset
    return number or None
