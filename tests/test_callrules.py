"""The call rules as a table of events and commands, without real time: each case runs for an
analog line (2 s of pre-roll before the notice; every key of a call that is not outgoing counts as
the caller's; an outgoing call starts at the off-hook and its answer is heard later) and for a SIP
trunk (recorded from the answer, the 200 OK; a key counts as the caller's when it comes from the
party who heard the notice), as their controllers feed the rules."""

import math
import random
from datetime import datetime
from pathlib import Path

import pytest

from appliance.callrules import (Beep, CallRules, Decline, Finish, KeepKey, ListenForAnswer, Pause, PlayNotice,
                                 Resume, StartRecording)
from appliance.config import CallRulesConfig, LineConfig, SipTrunkConfig
from appliance.selection import Selection, in_schedule

NOTICE_S = 4.0
LINES = {
    "analog": {"lead_in_s": 2.0, "answer_known": False,
               "outside": lambda direction, presser: direction != "outgoing"},
    "sip": {"lead_in_s": 0.0, "answer_known": True, "outside": lambda direction, presser: presser == "caller"},
}


class Call:
    """One call on a line of `kind`, fed as that line's controller feeds the rules."""

    def __init__(self, kind: str, direction: str = "incoming", notice_possible: bool = True,
                 selection: Selection | None = None, when: datetime | None = None, objected: bool = False,
                 **config):
        self.kind, self.direction = kind, direction
        self.rules = CallRules(CallRulesConfig(notice=Path("notice.wav"), **config), direction,
                               lead_in_s=LINES[kind]["lead_in_s"], notice_s=NOTICE_S,
                               notice_possible=notice_possible, answer_known=LINES[kind]["answer_known"],
                               objected=objected, selection=selection, when=when)

    def after_notice(self, seconds: float) -> float:
        """The offset into the recording `seconds` after the notice ended."""
        kept_before = 0.0 if self.rules.rules.record_from == "notice_end" else LINES[self.kind]["lead_in_s"] + NOTICE_S
        return kept_before + seconds

    def key(self, key: str, t: float, offset_s: float, presser: str = "caller") -> list:
        return self.rules.key(key, t, offset_s, LINES[self.kind]["outside"](self.direction, presser))

    def answer(self, started: float, answered: float) -> list:
        """Start an outgoing call at `started`, answered at `answered`: what the rules command
        from the start to the answer (a trunk's call starts at the answer, its 200 OK)."""
        if LINES[self.kind]["answer_known"]:
            return self.rules.started(answered) + self.rules.tick(answered)
        assert self.rules.started(started) == [ListenForAnswer()]
        assert self.rules.tick(answered - 0.1) == []
        return self.rules.answered(answered) + self.rules.tick(answered)


@pytest.fixture(params=sorted(LINES))
def kind(request) -> str:
    return request.param


def test_an_incoming_call_hears_the_notice_and_an_outgoing_one_once_the_called_party_answers(kind):
    assert Call(kind).rules.started(10.0) == [PlayNotice()]
    assert Call(kind, notice_incoming=False).rules.started(10.0) == []
    assert Call(kind, "outgoing").answer(10.0, 18.0) == [PlayNotice()]          # outgoing = "announce" by default
    off = Call(kind, "outgoing", outgoing="off")
    assert off.rules.started(10.0) == [] and off.rules.deadline() is None and off.rules.recording


def test_no_notice_into_a_call_already_in_progress_or_that_cannot_carry_it(kind):
    call = Call(kind, notice_possible=False, optout_digit="9")
    assert call.rules.started(10.0) == [] and call.rules.recording
    assert call.rules.keys_matter_until_s() is None           # no notice heard: nothing to opt out of
    assert call.key("9", 11.0, 1.0) == [KeepKey(1.0, "9")]


def test_an_analog_outgoing_call_not_heard_answered_gets_its_notice_at_the_fallback():
    call = Call("analog", "outgoing", answer_fallback_s=25.0)
    assert call.rules.started(10.0) == [ListenForAnswer()]
    assert call.rules.deadline() == 35.0
    assert call.rules.tick(34.9) == []
    assert call.rules.tick(35.0) == [PlayNotice()]
    assert call.rules.answered(36.0) == [] and call.rules.tick(60.0) == []     # once


@pytest.mark.parametrize("record_from", ["start", "notice_end"])
def test_an_outgoing_notice_at_the_answer_keeps_its_recording_and_opt_out_window_from_then(kind, record_from):
    call = Call(kind, "outgoing", record_from=record_from, optout_digit="9", optout_window_s=10.0)
    assert call.answer(10.0, 18.0) == [PlayNotice()]
    assert call.rules.recording == (record_from == "start")
    started = call.rules.notice_ended(18.0 + NOTICE_S)
    assert started == ([StartRecording(18.0 + NOTICE_S)] if record_from == "notice_end" else [])
    # The called party's window runs from the end of the notice they heard, not from the off-hook.
    ringing = 8.0 if kind == "analog" else 0.0
    assert call.rules.optout_until_s == call.after_notice(10.0) + (ringing if record_from == "start" else 0.0)


def test_beep_sounds_from_the_answer_every_interval_until_the_call_ends(kind):
    call = Call(kind, "outgoing", outgoing="beep", beep_interval_s=15.0)
    assert not call.rules.notice and call.rules.recording
    assert call.answer(10.0, 18.0) == [Beep(18.0)]
    assert call.rules.deadline() == 33.0
    assert call.rules.tick(32.9) == [] and call.rules.tick(33.0) == [Beep(33.0)]
    assert call.rules.tick(49.0) == [Beep(49.0)] and call.rules.deadline() == 64.0   # from the beep heard
    assert call.rules.hung_up(50.0) == [Finish(50.0, "complete")]
    assert call.rules.deadline() is None and call.rules.tick(64.0) == []


def test_beep_is_for_outgoing_calls_and_stops_with_a_private_call(kind):
    incoming = Call(kind, outgoing="beep")
    assert incoming.rules.started(10.0) == [PlayNotice()] and incoming.rules.deadline() is None
    private = Call(kind, "outgoing", outgoing="beep", private_code="*0").rules
    private.started(10.0)
    private.key("*", 10.2, 2.2, False)
    assert private.key("0", 10.4, 2.4, False) == [Decline("private")]
    assert private.deadline() is None and private.tick(40.0) == []


def test_beep_on_an_analog_line_waits_for_the_answer_or_the_fallback():
    call = Call("analog", "outgoing", outgoing="beep", answer_fallback_s=20.0, beep_interval_s=10.0)
    assert call.rules.started(10.0) == [ListenForAnswer()]
    assert call.rules.tick(29.9) == []
    assert call.rules.tick(30.0) == [Beep(30.0)] and call.rules.deadline() == 40.0


def test_old_outgoing_keys_load_as_the_policy_with_a_warning(caplog):
    def line(**keys):
        return LineConfig.model_validate({"name": "l", "hook_pin": 17, "hook_active": "low", "capture": "c",
                                          "playback": "p", "notice": "n.wav", **keys})
    assert line().outgoing == "announce" and not caplog.text                 # lawful by default
    assert line(notice_outgoing=False).outgoing == "off"
    assert 'notice_outgoing = false is now written outgoing = "off"' in caplog.text
    assert line(notice_outgoing=True).outgoing == "announce"
    delayed = line(notice_outgoing=True, notice_outgoing_after_s=8.0)
    assert (delayed.outgoing, delayed.answer_fallback_s) == ("announce", 8.0)
    assert "and answer_fallback_s = 8.0" in caplog.text
    with pytest.raises(ValueError, match="keep outgoing only"):
        line(notice_outgoing=True, outgoing="beep")
    with pytest.raises(ValueError, match="notice_outgoing: expected true or false"):
        line(notice_outgoing="yes")


def test_the_policy_of_each_line_for_the_status_page_and_the_privacy_notice():
    from appliance.config import Config
    config = Config.model_validate({
        "line": [{"name": "shop", "hook_pin": 17, "hook_active": "low", "capture": "c", "playback": "p",
                  "notice": "n.wav", "outgoing": "off"}],
        "sip_trunk": [{"name": "sip", "trunk": {"listen": "127.0.0.1:5060", "peer": "127.0.0.1:5070"},
                       "pbx": {"listen": "127.0.0.1:5062"}, "notice": "n.wav", "outgoing": "beep"}]})
    assert config.outgoing_policy == {"shop": "off", "sip": "beep"}


def test_with_record_from_notice_end_a_call_that_cannot_hear_the_notice_is_not_kept(kind):
    call = Call(kind, notice_possible=False, record_from="notice_end")
    assert call.rules.started(10.0) == [] and not call.rules.recording
    assert call.rules.hung_up(20.0) == [Finish(20.0, "discarded")]


def test_record_from_notice_end_keeps_nothing_before_the_notice_has_played(kind):
    call = Call(kind, record_from="notice_end")
    assert not call.rules.recording
    assert call.rules.pause_pressed(11.0) == []                 # nothing is recorded to pause yet
    assert call.rules.notice_ended(14.0) == [StartRecording(14.0)]
    assert call.rules.recording and call.rules.notice_ended(15.0) == []
    assert call.rules.hung_up(30.0) == [Finish(30.0, "complete")]


def test_a_call_that_ends_before_its_notice_has_played_keeps_nothing(kind):
    call = Call(kind, record_from="notice_end")
    assert call.rules.hung_up(12.0) == [Finish(12.0, "discarded")]
    assert call.rules.notice_ended(14.0) == []                  # the notice ends after the hang-up


@pytest.mark.parametrize("record_from", ["start", "notice_end"])
def test_the_opt_out_key_within_its_window_declines_and_later_is_only_a_key(kind, record_from):
    call = Call(kind, optout_digit="9", optout_window_s=15.0, record_from=record_from)
    call.rules.notice_ended(14.0)
    late = call.after_notice(15.5)
    assert call.key("9", 40.0, late) == [KeepKey(late, "9")]
    call = Call(kind, optout_digit="9", optout_window_s=15.0, record_from=record_from)
    call.rules.notice_ended(14.0)
    within = call.after_notice(14.5)
    assert call.key("9", 30.0, within) == [KeepKey(within, "9"), Decline()]
    assert call.rules.declined and not call.rules.recording
    assert call.key("1", 31.0, within + 1) == []                # nothing more is kept of the call
    assert call.rules.hung_up(40.0) == [Finish(40.0, "discarded", declined=True)]


def test_on_an_outgoing_call_only_the_called_party_who_heard_the_notice_may_opt_out(kind):
    call = Call(kind, "outgoing", optout_digit="9")
    # The shop dials its number (an analog line hears every key as the shop's on an outgoing call).
    assert call.key("9", 11.0, 1.0, presser="shop") == [KeepKey(1.0, "9")]
    assert not call.rules.declined


def test_a_pause_code_pauses_and_resumes_and_keys_typed_meanwhile_are_not_kept(kind):
    call = Call(kind, pause_code="*7", pause_max_s=300.0)
    assert call.rules.keys_matter_until_s() == math.inf        # a code can come at any time
    assert call.key("*", 20.0, 5.0) == [KeepKey(5.0, "*")]
    assert call.key("7", 20.2, 5.2) == [Pause(20.2, "dtmf")]
    assert call.rules.paused
    assert [call.key(k, 22.0 + i, 7.0 + i) for i, k in enumerate("4111")] == [[], [], [], []]
    assert call.key("*", 30.0, 15.0) == []
    assert call.key("7", 30.2, 15.2) == [Resume(30.2)]
    assert call.key("5", 31.0, 16.0) == [KeepKey(16.0, "5")]


def test_a_pause_left_on_resumes_by_itself_after_pause_max(kind):
    call = Call(kind, pause_max_s=60.0)
    assert call.rules.pause_pressed(100.0) == [Pause(100.0, "button")]
    assert call.rules.deadline() == 160.0
    assert call.rules.tick(159.9) == []
    assert call.rules.tick(160.0) == [Resume(160.0)]
    assert not call.rules.paused and call.rules.deadline() is None


def test_the_pause_button_toggles_and_a_hang_up_ends_the_pause_with_the_recording(kind):
    call = Call(kind)
    assert call.rules.pause_pressed(10.0) == [Pause(10.0, "button")]
    assert call.rules.pause_pressed(12.0) == [Resume(12.0)]
    assert call.rules.pause_pressed(14.0) == [Pause(14.0, "button")]
    assert call.rules.hung_up(20.0) == [Resume(20.0), Finish(20.0, "complete")]
    assert call.rules.hung_up(21.0) == [] and call.rules.tick(400.0) == []


def test_the_screens_pause_follows_the_buttons_rules_and_is_marked_screen(kind):
    call = Call(kind, pause_max_s=60.0)
    assert call.rules.pause_pressed(10.0, "screen") == [Pause(10.0, "screen")]
    assert call.rules.deadline() == 70.0                        # left on, it resumes by itself
    assert call.rules.pause_pressed(12.0, "screen") == [Resume(12.0)]
    waiting = Call(kind, record_from="notice_end")              # nothing kept yet: nothing to pause
    assert waiting.rules.pause_pressed(1.0, "screen") == []


def test_a_call_may_be_heard_live_only_once_no_key_can_refuse_it(kind):
    call = Call(kind, optout_digit="9", optout_window_s=15.0, private_code="00", private_window_s=5.0)
    call.rules.started(10.0)
    window_end = call.after_notice(15.0)
    assert not call.rules.listenable(window_end + 0.9)         # a key at its end may not be heard yet
    assert call.rules.listenable(window_end + 1.1)
    call.rules.hung_up(60.0)
    assert not call.rules.listenable(window_end + 1.0)          # over
    waiting = Call(kind, record_from="notice_end")
    assert not waiting.rules.listenable(100.0)                   # not kept (yet)
    assert Call(kind).rules.listenable(0.0)                      # no window: at once
    declined = Call(kind, optout_digit="9")
    declined.rules.notice_ended(14.0)
    declined.key("9", 15.0, declined.after_notice(1.0))
    assert not declined.rules.listenable(100.0)


def test_a_call_stopped_by_the_recorder_is_interrupted(kind):
    assert Call(kind).rules.hung_up(20.0, interrupted=True) == [Finish(20.0, "interrupted")]


def test_without_a_pause_code_keys_matter_only_until_the_opt_out_window_ends(kind):
    call = Call(kind, optout_digit="9", optout_window_s=10.0)
    assert call.rules.keys_matter_until_s() == call.after_notice(10.0)
    assert Call(kind).rules.keys_matter_until_s() is None


def test_lines_and_trunks_take_the_same_call_rules_and_the_old_spellings_with_a_warning(caplog):
    rules = set(CallRulesConfig.model_fields)
    assert rules <= set(LineConfig.model_fields) and rules <= set(SipTrunkConfig.model_fields)
    old_line = LineConfig.model_validate({"name": "l", "hook_pin": 17, "hook_active": "low", "capture": "c",
                                          "playback": "p", "notice": "n.wav", "notice_outgoing_after_s": 5.0})
    assert old_line.outgoing == "announce" and old_line.answer_fallback_s == 5.0
    old_trunk = SipTrunkConfig.model_validate({
        "name": "t", "trunk": {"listen": "127.0.0.1:5060", "peer": "127.0.0.1:5070"},
        "pbx": {"listen": "127.0.0.1:5062"}, "notice": "n.wav", "record_from": "answer"})
    assert old_trunk.record_from == "start"
    assert "record_from = 'answer' is now written" in caplog.text
    assert 'notice_outgoing_after_s = 5.0 is now written outgoing = "announce"' in caplog.text


@pytest.mark.parametrize("direction", ["incoming", "outgoing"])
def test_a_number_on_the_do_not_record_list_gets_no_notice_and_keeps_nothing(direction):
    rules = CallRules(CallRulesConfig(notice=Path("notice.wav"), optout_digit="9", pause_code="*1"), direction, lead_in_s=2.0, notice_s=NOTICE_S, objected=True)
    assert not rules.notice and not rules.recording and rules.keys_matter_until_s() is None
    assert rules.started(0.0) == [Decline("objected")]
    assert rules.notice_ended(4.0) == [] and rules.key("9", 5.0, 3.0, True) == [] and rules.pause_pressed(6.0) == []
    assert rules.hung_up(9.0) == [Finish(9.0, "discarded", declined=True)]


def test_a_number_known_only_during_the_call_destroys_what_was_kept_once():
    rules = CallRules(CallRulesConfig(notice=Path("notice.wav"), pause_code="*1"), "incoming", lead_in_s=2.0,
                      notice_s=NOTICE_S)
    assert rules.started(0.0) == [PlayNotice()]
    rules.notice_ended(4.0)
    assert rules.key("*", 6.0, 8.0, True) + rules.key("1", 6.2, 8.2, True) == [KeepKey(8.0, "*"), Pause(6.2, "dtmf")]
    assert rules.objection() == [Decline("objected")]
    assert not rules.recording and not rules.paused and rules.deadline() is None
    assert rules.objection() == [] and rules.key("1", 7.0, 9.0, True) == []
    assert rules.hung_up(9.0) == [Finish(9.0, "discarded", declined=True)]


def test_the_private_code_as_the_first_keys_keeps_nothing_of_the_call(kind):
    rules = Call(kind, "outgoing", private_code="*0", pause_code="#5").rules
    assert rules.keys_matter_until_s() == math.inf
    rules.started(10.0)
    assert rules.key("*", 11.0, 3.0, False) == [KeepKey(3.0, "*")]
    assert rules.key("0", 11.2, 3.2, False) == [Decline("private")]
    assert rules.hung_up(20.0) == [Finish(20.0, "discarded", declined=True)]
    late = Call(kind, "incoming", private_code="*0").rules             # too late: past the window
    late.started(10.0)
    late.key("*", 30.0, 22.0, True)
    assert late.key("0", 30.2, 22.2, True) == [KeepKey(22.2, "0")] and late.recording
    not_first = Call(kind, "outgoing", private_code="*0").rules        # a number with *0 in it
    not_first.started(10.0)
    assert [not_first.key(k, 11.0 + n / 5, 3.0, False) for n, k in enumerate("0*0")][-1] == [KeepKey(3.0, "0")]
    assert not not_first.declined


def test_a_line_that_is_never_recorded_keeps_nothing_and_plays_no_notice(kind):
    rules = Call(kind, "incoming", record=False).rules
    assert not rules.notice and not rules.recording
    assert rules.started(0.0) == [Decline("private")]
    assert rules.hung_up(5.0) == [Finish(5.0, "discarded", declined=True)]


MONDAY = datetime(2026, 11, 30)       # a Monday


def test_only_calls_inside_the_schedule_are_recorded(kind):
    schedule = ["mon-fri 09:00-12:00", "sat 22:00-02:00"]
    selection = Selection(schedule, 1)
    inside = Call(kind, selection=selection, when=MONDAY.replace(hour=9), schedule=schedule).rules
    assert inside.started(0.0) == [PlayNotice()] and inside.recording
    for when in (MONDAY.replace(hour=12), datetime(2026, 12, 5, 21, 59)):      # Monday noon; Saturday
        outside = Call(kind, selection=selection, when=when, optout_digit="9", schedule=schedule).rules
        assert not outside.notice and not outside.recording and outside.keys_matter_until_s() is None
        assert outside.started(0.0) == [Decline("off-schedule")]
        assert outside.hung_up(5.0) == [Finish(5.0, "discarded", declined=True)]
    # Saturday's window runs into Sunday 02:00; none runs into Saturday from Friday.
    assert in_schedule(schedule, datetime(2026, 12, 6, 1, 59))
    assert not in_schedule(schedule, datetime(2026, 12, 6, 2, 0))
    assert not in_schedule(schedule, datetime(2026, 12, 5, 1, 0))


def test_one_call_in_n_is_recorded_exactly_once_in_each_run_of_n(kind):
    selection = Selection([], 5, rng=random.Random(7))
    recorded = []
    for run in range(6):
        kept = [Call(kind, selection=selection, when=MONDAY, record_one_in=5).rules.started(0.0) == [PlayNotice()]
                for _ in range(5)]
        assert kept.count(True) == 1, f"run {run}: {kept}"
        recorded.append(kept.index(True))
    assert len(set(recorded)) > 1          # not always the same place in the run: nobody can tell beforehand


def test_a_call_refused_for_another_reason_takes_no_place_in_the_share(kind):
    selection = Selection([], 2, rng=random.Random(3))
    Call(kind, selection=selection, when=MONDAY, objected=True).rules.started(0.0)
    Call(kind, selection=selection, when=MONDAY, record=False).rules.started(0.0)
    pair = [Call(kind, selection=selection, when=MONDAY).rules.unselected for _ in range(2)]
    assert sorted(pair, key=str) == [None, "not-selected"]


@pytest.mark.parametrize("entry, error", [
    ("mon-fri 9-17", "expected days and hours"), ("mo 09:00-10:00", "'mo' is not a day"),
    ("mon 09:00-24:30", "'24:30' is not a time of day"), ("mon 09:00-09:00", "the window is empty")])
def test_a_bad_schedule_entry_is_refused_naming_it(entry, error):
    with pytest.raises(ValueError, match=error):
        CallRulesConfig(notice=Path("notice.wav"), schedule=[entry])


def test_the_private_button_within_its_window_keeps_nothing_of_the_call(kind):
    call = Call(kind, "incoming", private_window_s=5.0, pause_code="*1")
    assert call.rules.private_pressed(9.0) == []             # not started yet: the line keeps it for the start
    call.rules.started(10.0)
    assert call.rules.private_pressed(14.0) == [Decline("private")]
    assert not call.rules.recording and call.rules.key("*", 15.0, 6.0, True) == []
    assert call.rules.hung_up(20.0) == [Finish(20.0, "discarded", declined=True)]
    late = Call(kind, "outgoing", private_window_s=5.0).rules
    late.started(10.0)
    assert late.private_pressed(15.5) == [] and late.recording
