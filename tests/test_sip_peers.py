"""Each side's peer pinged with OPTIONS (which also keeps a NAT router's binding open): SIPp as an
operator that answers them, then stops; the alarm, the fault LED and the live state name it until
it answers again. `callrec doctor` asks the peers the same way and names what failed."""

import time

from appliance.config import load_config
from appliance.doctor import FAIL, OK, check_trunk_peers
from appliance.faultled import TRUNK_DOWN
from conftest import wait_for
from sipp.harness import HOST, finish, free_port, sipp
from test_sip import trunk  # noqa: F401 (fixture)


def test_a_peer_that_stops_answering_its_pings_raises_an_alarm_until_it_answers_again(trunk):
    operator = sipp("uas_options.xml", trunk.folder, trunk.operator_port, free_port(), calls=2, extra=("-trace_msg",))
    time.sleep(0.2)
    recorder = trunk.start(pbx_peer=False, keepalive_s=1.0)        # phones register: no PBX to ping
    finish(operator, trunk.folder, timeout=10)                      # two pings, a second apart, answered
    [messages] = trunk.folder.glob("uas_options_*_messages.log")
    assert f"Via: SIP/2.0/UDP {HOST}:{trunk.trunk_port};branch=z9hG4bKcr" in messages.read_text()
    assert "sip_peer" not in recorder.alarm_conditions()

    assert wait_for(lambda: "sip_peer" in recorder.alarm_conditions(), 8), "no alarm for a silent operator"
    alarm = recorder.alarm_conditions()["sip_peer"]
    assert f"sip trunk sip1: the operator's server {HOST}:{trunk.operator_port} has not answered since" in alarm
    assert TRUNK_DOWN in recorder.faults() and "sip_trunk" not in recorder.alarm_conditions()
    [state] = [t.snapshot() for t in recorder.trunks]
    assert state["peer_problem"] == alarm and state["problem"] is None     # the relay itself is fine
    assert recorder.problem(10.0) is None                   # nothing a restart of the recorder would mend

    operator = sipp("uas_options.xml", trunk.folder, trunk.operator_port, free_port(), calls=1)
    assert wait_for(lambda: "sip_peer" not in recorder.alarm_conditions(), 8), "the alarm stayed"
    finish(operator, trunk.folder, timeout=10)
    assert TRUNK_DOWN not in recorder.faults()


def test_the_doctor_asks_each_peer_and_names_the_one_that_does_not_answer(trunk):
    operator = sipp("uas_options.xml", trunk.folder, trunk.operator_port, free_port(), calls=1)
    time.sleep(0.2)
    [config] = load_config(trunk.config()).sip_trunk            # the PBX at a port where nothing listens
    operator_result, pbx_result = check_trunk_peers(config, 2.0)
    finish(operator, trunk.folder, timeout=10)
    assert operator_result.status == OK
    assert operator_result.message == f"sip trunk sip1: the operator's server {HOST}:{trunk.operator_port}: " \
                                      f"{HOST}:{trunk.operator_port} over UDP answered 200 OK"
    assert pbx_result.status == FAIL
    assert f"the PBX {HOST}:{trunk.phone_port}: nothing listens at {HOST}:{trunk.phone_port} over UDP" in pbx_result.message
    assert "external" in pbx_result.fix
