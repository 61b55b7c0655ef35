"""The operator named by a host name, found as RFC 3263 says (NAPTR, then SRV, then A) in a DNS
server of its own (dnsmasq), looked up again when its records' TTL runs out; and a trunk whose two
sides are on IPv6. SIPp plays both parties; the recording holds what each side sent."""

import shutil
import subprocess
import time

import pytest

from appliance.config import load_config
from appliance.recorder import Recorder
from appliance.sip import g711, locate
from conftest import tone, wait_for, write_wav
from sipp.harness import HOST, finish, free_port, read_stereo, sipp, trunk_config, write_pcap
from test_sip import CALLEE_HZ, CALLER_HZ, NOTICE_HZ, NOTICE_S, levels

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


class Dns:
    """dnsmasq on 127.0.0.1 answering for `operator.test`: a NAPTR record that says SIP over TCP,
    its SRV record toward a SIPp port, and the A record of that host; each with a 1 s TTL."""

    def __init__(self, folder):
        self.folder, self.port, self.process = folder, free_port(), None

    def serve(self, operator_port: int) -> None:
        """(Re)start with the SRV record pointing at `operator_port`."""
        self.stop()
        self.process = subprocess.Popen(
            [DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts", f"--port={self.port}",
             f"--listen-address={HOST}", "--bind-interfaces", "--local-ttl=1", "--user=root",
             f"--pid-file={self.folder / 'dnsmasq.pid'}", f"--log-facility={self.folder / 'dnsmasq.log'}",
             "--naptr-record=operator.test,10,50,s,SIP+D2T,,_sip._tcp.operator.test",
             f"--srv-host=_sip._tcp.operator.test,sip-a.operator.test,{operator_port},10,10",
             f"--host-record=sip-a.operator.test,{HOST}"])
        time.sleep(0.3)

    def stop(self) -> None:
        """Stop it."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(5)


@pytest.fixture
def dns(tmp_path):
    if shutil.which(DNSMASQ) is None:
        pytest.skip("dnsmasq is not installed")
    server = Dns(tmp_path)
    yield server
    server.stop()


def outgoing_call(folder, pbx: str, operator_port: int, media: int, transport: str = "t1") -> None:
    """A call from the PBX (SIPp over UDP) to the operator (SIPp listening on `operator_port`)."""
    host = pbx.rpartition(":")[0].strip("[]")
    uas = sipp("uas.xml", folder, operator_port, media, transport=transport, host=host)
    time.sleep(0.2)
    uac = sipp("uac.xml", folder, free_port(), free_port(4), remote=pbx, duration_ms=2500, transport="u1",
               service="0475123456", host=host)
    finish(uac, folder)
    finish(uas, folder)


def test_an_operator_named_by_dns_is_found_by_naptr_and_srv_and_followed_when_its_records_change(
        tmp_path, dns, monkeypatch):
    monkeypatch.setattr(locate, "MIN_TTL_S", 1.0)
    write_pcap(tmp_path / "caller.pcap", tone(CALLER_HZ, 3.0, 0.5), g711.PCMA, 0x1111)
    write_pcap(tmp_path / "callee.pcap", tone(CALLEE_HZ, 3.0, 0.5), g711.PCMA, 0x2222)
    first, second = free_port(), free_port()
    dns.serve(first)
    pbx_port = free_port()
    config = trunk_config(tmp_path, free_port(), pbx_port, 5060, None, write_wav(tmp_path / "n.wav", tone(NOTICE_HZ, NOTICE_S)),
                          free_port(100), dns_servers=[f"{HOST}:{dns.port}"])
    # The operator by name only: no port, no transport (the NAPTR record chooses TCP).
    config.write_text(config.read_text().replace(f'peer = "{HOST}:5060"\ntransport = "udp"\n', 'peer = "operator.test"\n'))
    recorder = Recorder(load_config(config))
    recorder.start()
    try:
        outgoing_call(tmp_path, f"{HOST}:{pbx_port}", first, free_port(4))
        dns.serve(second)                                # the operator moved: a new SRV target
        time.sleep(2.5)                                   # the old answer's TTL runs out
        outgoing_call(tmp_path, f"{HOST}:{pbx_port}", second, free_port(4))
        assert wait_for(recorder.idle, 15)
        calls = recorder.catalogue.calls()
    finally:
        recorder.stop()
    assert [(c["direction"], c["state"]) for c in calls] == [("outgoing", "complete")] * 2
    for call in calls:
        left, right = read_stereo(tmp_path / "data" / call["file"])
        # Left: the notice the operator heard in place of the shop, then the shop; right: the operator.
        assert levels(left, NOTICE_S + 0.2, 2.0)[CALLER_HZ] > 0.4 and levels(right, 0.2, 2.0)[CALLEE_HZ] > 0.4


def test_a_trunk_on_ipv6_relays_and_records_its_calls(tmp_path):
    write_pcap(tmp_path / "caller.pcap", tone(CALLER_HZ, 3.0, 0.5), g711.PCMA, 0x1111)
    write_pcap(tmp_path / "callee.pcap", tone(CALLEE_HZ, 3.0, 0.5), g711.PCMA, 0x2222)
    trunk_port, pbx_port, operator_port = free_port(), free_port(), free_port()
    config = trunk_config(tmp_path, trunk_port, pbx_port, operator_port, None,
                          write_wav(tmp_path / "n.wav", tone(NOTICE_HZ, NOTICE_S)), free_port(100))
    config.write_text(config.read_text().replace(f'"{HOST}:', '"[::1]:'))
    recorder = Recorder(load_config(config))
    recorder.start()
    try:
        outgoing_call(tmp_path, f"[::1]:{pbx_port}", operator_port, free_port(4), transport="u1")
        assert wait_for(recorder.idle, 15)
        [call] = recorder.catalogue.calls()
    finally:
        recorder.stop()
    assert (call["direction"], call["state"]) == ("outgoing", "complete")
    left, right = read_stereo(tmp_path / "data" / call["file"])
    assert levels(left, 0.05, NOTICE_S - 0.05)[NOTICE_HZ] > 0.4         # the notice sent to the operator
    assert levels(left, NOTICE_S + 0.2, 2.0)[CALLER_HZ] > 0.4           # then the shop, over IPv6
    assert levels(right, 0.2, 2.0)[CALLEE_HZ] > 0.4                     # the operator's side, over IPv6
