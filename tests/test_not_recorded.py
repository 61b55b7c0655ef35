"""Calls that are not recorded. The do-not-record list (GDPR Art. 21): kept as keyed hashes only,
changed from the command line and read by the running recorder; a listed number's call is not
recorded when its caller ID comes before the answer (the modem, a SIP INVITE), and what was kept
is destroyed when it is known only later (caller ID reported after the answer, the number an
outgoing call dials). The staff's private calls: the private code as a call's first keys, and
lines that are never recorded."""

import shutil
from datetime import datetime

import numpy as np
import pytest

from appliance.selection import DAYS
from appliance.sip import g711
from appliance.store.archive import SPOOL_DIR
from appliance.store.catalogue import Catalogue
from conftest import RATE, calls_json, callrec, tone, write_config, write_scenario, write_wav
from sipp.harness import SIPP_PCAPS, write_pcap
from test_sip import CALLEE_HZ, CALLER_HZ, call_through, trunk  # noqa: F401 (trunk: fixture)

LISTED = "+32 470 12 34 56"
ALSO_LISTED = "0475 99 88 77"
NOT_LISTED = "+3225550303"


def test_the_list_keeps_no_number_and_every_change_is_audited_without_one(tmp_path):
    data = tmp_path / "data"
    Catalogue(data).close()
    assert "now on" in callrec("do-not-record", "add", LISTED, "--note", "request R-12", "--data", str(data)).stdout
    assert "already on" in callrec("do-not-record", "add", "0470123456", "--data", str(data)).stdout
    refused = callrec("do-not-record", "add", "call me", "--data", str(data), check=False)
    assert refused.returncode == 2 and "not a phone number" in refused.stderr
    listed = callrec("do-not-record", "list", "--data", str(data)).stdout
    assert "…456" in listed and "request R-12" in listed
    callrec("do-not-record", "add", ALSO_LISTED, "--data", str(data))
    callrec("do-not-record", "remove", "0475998877", "--data", str(data))
    gone = callrec("do-not-record", "remove", "0475998877", "--data", str(data), check=False)
    assert gone.returncode == 2 and "not on the do-not-record list" in gone.stderr
    catalogue = Catalogue(data)
    actions = [(row[0], row[1]) for row in catalogue.db.execute("SELECT action, detail FROM audit ORDER BY id")]
    assert [action for action, _ in actions] == ["do-not-record", "do-not-record", "record-again"]
    catalogue.checkpoint()
    catalogue.close()
    for path in data.glob("catalogue.db*"):
        for form in (b"470123456", b"475998877", b"47012", b"0475 99"):
            assert form not in path.read_bytes(), (path.name, form)


@pytest.fixture(scope="module")
def objected_run(tmp_path_factory):
    """On one analog line: a listed caller whose number the modem gives between the rings, a
    listed caller whose number it gives only after the answer, an outgoing call dialling a listed
    number, an unlisted caller, and a private outgoing call (the private code before the number)."""
    folder = tmp_path_factory.mktemp("objected")
    config = write_config(folder, recorder={"ring_gap_s": 3.0}, line={"private_code": "*0"})
    voice = str(write_wav(folder / "voice.wav", tone(700, 5.0, 0.3)))
    scenario = write_scenario(folder, [
        {"direction": "incoming", "at": 0.5, "rings": 2, "caller_id": "+32470123456", "audio": voice},
        {"direction": "incoming", "at": 11.0, "rings": 1, "caller_id": "+32475998877", "caller_id_timing": "after_answer",
         "audio": voice},
        {"direction": "outgoing", "at": 20.0, "talk": 6.0, "dtmf": [{"at": 0.5, "digits": "0475998877"}]},
        {"direction": "incoming", "at": 29.0, "rings": 2, "caller_id": NOT_LISTED, "audio": voice},
        {"direction": "outgoing", "at": 42.0, "talk": 6.0, "dtmf": [{"at": 0.5, "digits": "*00475123000"}]},
    ], ring_on_s=0.8, ring_off_s=1.2)
    data = folder / "data"
    Catalogue(data).close()
    for number in (LISTED, ALSO_LISTED):
        callrec("do-not-record", "add", number, "--data", str(data))
    callrec("simulate", str(scenario), "--config", str(config), "--data", str(data))
    return data, calls_json(data)


def test_a_listed_caller_named_before_the_answer_is_not_recorded_and_hears_no_notice(objected_run):
    data, calls = objected_run
    call = calls[0]
    assert (call["direction"], call["state"], call["discard_reason"]) == ("incoming", "discarded", "objected")
    assert call["file"] is None and call["number"] is None and call["notice_played_at"] is None
    assert call["recording_started_at"] is None and call["ended_at"]


def test_a_listed_caller_named_after_the_answer_loses_what_was_kept(objected_run):
    data, calls = objected_run
    call = calls[1]
    assert (call["direction"], call["state"], call["discard_reason"], call["file"]) == \
        ("incoming", "discarded", "objected", None)
    assert call["number"] is None and call["recording_started_at"] is None


def test_an_outgoing_call_to_a_listed_number_loses_what_was_kept_once_the_dialling_is_heard(objected_run):
    data, calls = objected_run
    call = calls[2]
    assert (call["direction"], call["state"], call["discard_reason"], call["file"]) == \
        ("outgoing", "discarded", "objected", None)
    assert call["number"] is None
    catalogue = Catalogue(data)
    assert catalogue.digits(call["id"]) == []
    catalogue.close()


def test_an_unlisted_caller_is_recorded_and_nothing_is_left_of_the_others(objected_run):
    data, calls = objected_run
    assert len(calls) == 5
    call = calls[3]
    assert (call["state"], call["number"], call["discard_reason"]) == ("complete", NOT_LISTED, None)
    assert call["file"] and call["notice_played_at"]
    assert len(list(data.glob("archive/**/*.*"))) == 1 and not list((data / SPOOL_DIR).iterdir())
    assert callrec("verify", "--data", str(data)).returncode == 0


def test_a_sip_call_from_a_listed_number_is_relayed_but_nothing_of_it_is_kept(trunk):  # noqa: F811
    write_pcap(trunk.folder / "caller.pcap", tone(CALLER_HZ, 2.0, 0.5), g711.PCMA, 0x1111)
    write_pcap(trunk.folder / "callee.pcap", tone(CALLEE_HZ, 2.0, 0.5), g711.PCMA, 0x2222)
    recorder = trunk.start()
    recorder.objections.add("02 555 12 34", "user:dpo")          # the caller's P-Asserted-Identity
    call_through(trunk, "uac.xml", "uas.xml", 2000)                # SIPp: the call went through
    [call] = trunk.calls()
    assert (call["state"], call["discard_reason"], call["number"], call["file"], call["notice_played_at"]) == \
        ("discarded", "objected", None, None, None)
    assert not list((trunk.folder / "data" / SPOOL_DIR).iterdir())
    assert not list((trunk.folder / "data").glob("archive/**/*.*"))
    recorder.objections.remove("+3225551234", "user:dpo")
    call_through(trunk, "uac.xml", "uas.xml", 2000)
    assert [c["state"] for c in trunk.calls()] == ["discarded", "complete"]


def test_the_private_code_dialled_before_the_number_keeps_nothing_not_even_the_number(objected_run):
    data, calls = objected_run
    call = calls[4]
    assert (call["direction"], call["state"], call["discard_reason"], call["number"], call["file"]) == \
        ("outgoing", "discarded", "private", None, None)
    catalogue = Catalogue(data)
    assert catalogue.digits(call["id"]) == []
    catalogue.close()


@pytest.mark.parametrize("settings", [{"private_code": "##"}, {"record": False}], ids=["private code", "never recorded"])
def test_a_private_sip_call_is_relayed_but_nothing_of_it_is_kept(trunk, settings):  # noqa: F811
    for name in ("key1.pcap", "key2.pcap"):
        shutil.copy(SIPP_PCAPS / "dtmf_2833_pound.pcap", trunk.folder / name)
    write_pcap(trunk.folder / "callee.pcap", tone(CALLEE_HZ, 5.0, 0.5), g711.PCMA, 0x2222)
    trunk.start(notice_incoming=False, keep_declined_number=True, **settings)
    call_through(trunk, "uac_keys.xml", "uas.xml", 1500)
    [call] = trunk.calls()
    assert (call["state"], call["discard_reason"], call["number"], call["file"]) == ("discarded", "private", None, None)
    assert trunk.recorder.catalogue.digits(call["id"]) == []
    assert not list((trunk.folder / "data" / SPOOL_DIR).iterdir())


def test_a_trunk_records_one_call_in_two_and_none_outside_its_schedule(trunk):  # noqa: F811
    write_pcap(trunk.folder / "caller.pcap", tone(CALLER_HZ, 2.0, 0.5), g711.PCMA, 0x1111)
    write_pcap(trunk.folder / "callee.pcap", tone(CALLEE_HZ, 2.0, 0.5), g711.PCMA, 0x2222)
    tomorrow = DAYS[(datetime.now().weekday() + 1) % 7]
    recorder = trunk.start(notice_incoming=False, keep_declined_number=True, record_one_in=2)
    for _ in range(4):
        call_through(trunk, "uac.xml", "uas.xml", 2000)
    states = [(c["state"], c["discard_reason"]) for c in trunk.calls()]
    assert states[:2].count(("complete", None)) == 1 and states[2:].count(("complete", None)) == 1, states
    assert sorted(states, key=str).count(("discarded", "not-selected")) == 2
    assert len(list((trunk.folder / "data").glob("archive/**/*.*"))) == 2
    recorder.reload(recorder.config.model_copy(update={"sip_trunk": [
        recorder.config.sip_trunk[0].model_copy(update={"schedule": [f"{tomorrow} 10:00-11:00"], "record_one_in": 1})]}))
    call_through(trunk, "uac.xml", "uas.xml", 2000)
    assert (trunk.calls()[-1]["state"], trunk.calls()[-1]["discard_reason"]) == ("discarded", "off-schedule")


def test_the_private_button_at_the_answer_or_before_the_off_hook_keeps_nothing_of_the_call(tmp_path):
    config = write_config(tmp_path, recorder={"ring_gap_s": 3.0},
                          line={"private_button_pin": 6, "private_window_s": 4.0, "keep_declined_number": True})
    voice = str(write_wav(tmp_path / "voice.wav", tone(700, 3.0, 0.3)))
    scenario = write_scenario(tmp_path, [
        {"direction": "incoming", "at": 0.5, "rings": 1, "caller_id": NOT_LISTED, "audio": voice, "private_at": [1.0]},
        {"direction": "outgoing", "at": 8.0, "audio": voice, "private_at": [-1.0],
         "dtmf": [{"at": 0.5, "digits": "0475123000"}]},
        {"direction": "outgoing", "at": 14.0, "audio": voice, "private_at": [5.0], "talk": 6.0},   # too late
    ], ring_on_s=0.8, ring_off_s=1.2)
    data = tmp_path / "data"
    callrec("simulate", str(scenario), "--config", str(config), "--data", str(data))
    calls = calls_json(data)
    for call in calls[:2]:
        assert (call["state"], call["discard_reason"], call["number"], call["file"]) == \
            ("discarded", "private", None, None), call
        assert Catalogue(data).digits(call["id"]) == []
    assert (calls[2]["state"], calls[2]["file"] is not None) == ("complete", True)
    assert len(list(data.glob("archive/**/*.*"))) == 1 and not list((data / SPOOL_DIR).iterdir())


def test_a_listed_number_given_by_dtmf_clip_after_the_answer_loses_what_was_kept(tmp_path):
    # The exchange's keys come while the line is quiet: before the callee speaks, with no notice
    # over them (a notice played at the answer would drown them).
    config = write_config(tmp_path, recorder={"ring_gap_s": 3.0}, line={"caller_id": "dtmf", "notice_incoming": False})
    voice = str(write_wav(tmp_path / "voice.wav", np.concatenate([np.zeros(3 * RATE), tone(440, 2.0, 0.3)])))
    scenario = write_scenario(tmp_path, [
        {"direction": "incoming", "at": 0.5, "rings": 1, "caller_id": "+32470123456", "caller_id_timing": "after_answer",
         "audio": voice},
        {"direction": "incoming", "at": 9.0, "rings": 1, "caller_id": NOT_LISTED, "caller_id_timing": "after_answer",
         "audio": voice},
    ], ring_on_s=0.8, ring_off_s=1.2)
    data = tmp_path / "data"
    Catalogue(data).close()
    callrec("do-not-record", "add", LISTED, "--data", str(data))
    callrec("simulate", str(scenario), "--config", str(config), "--data", str(data))
    listed, other = calls_json(data)
    assert (listed["state"], listed["discard_reason"], listed["number"], listed["file"]) == \
        ("discarded", "objected", None, None)
    assert (other["state"], other["number"]) == ("complete", "003225550303") and other["file"]   # "+" sent as 00
    assert len(list(data.glob("archive/**/*.*"))) == 1


def test_a_sip_call_whose_from_names_a_listed_number_is_not_kept(trunk):  # noqa: F811
    write_pcap(trunk.folder / "caller.pcap", tone(CALLER_HZ, 2.0, 0.5), g711.PCMA, 0x1111)
    write_pcap(trunk.folder / "callee.pcap", tone(CALLEE_HZ, 2.0, 0.5), g711.PCMA, 0x2222)
    recorder = trunk.start()
    recorder.objections.add("+32 2 555 00 77", "user:dpo")
    # No usable P-Asserted-Identity: the number is the From's, as the operator wrote it.
    call_through(trunk, "uac.xml", "uas.xml", 1500, caller_keys={"pai": "anonymous", "caller": "025550077"})
    call_through(trunk, "uac.xml", "uas.xml", 1500, caller_keys={"pai": "anonymous", "caller": "025550078"})
    listed, other = trunk.calls()
    assert (listed["state"], listed["discard_reason"], listed["number"], listed["file"]) == \
        ("discarded", "objected", None, None)
    assert (other["state"], other["number"]) == ("complete", "025550078")
