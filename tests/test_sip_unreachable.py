"""A PBX the appliance cannot reach over TCP or TLS (nothing listening, a certificate it does not
trust, a server that never finishes the handshake): SIPp as the operator's caller gets 503 Service
Unavailable at once, with a Warning that says why, instead of waiting for its INVITE to time out;
the call is a missed one, and the caller's ACK does not try the PBX again. And a STUN server that
does not answer: the trunk starts all the same, on its own address."""

import shutil
import socket
import subprocess
import time

from appliance.config import load_config
from appliance.recorder import Recorder
from appliance.sip import g711, transport
from sipp.certs import make_certificates
from sipp.harness import HOST, finish, free_port, sipp, write_pcap
from test_sip import CALLEE_HZ, CALLER_HZ, call_through, trunk  # noqa: F401 (fixture)
from conftest import tone, wait_for

OPENSSL = shutil.which("openssl") or "openssl"


def pbx_over(trunk, kind: str, port: int, trusted=None) -> None:
    """Start the trunk with its PBX at `port` of 127.0.0.1 over `kind` (tcp or tls, checked against `trusted`)."""
    config = trunk.config()
    operator_side, pbx_side = config.read_text().split("[sip_trunk.pbx]\n")
    pbx_side = pbx_side.replace('transport = "udp"\n', f'transport = "{kind}"\n').replace(
        f'peer = "{HOST}:{trunk.phone_port}"\n', f'peer = "{HOST}:{port}"\n')
    if trusted is not None:
        pbx_side += f'tls_ca = "{trusted / "ca.pem"}"\n'
    config.write_text(f"{operator_side}[sip_trunk.pbx]\n{pbx_side}")
    trunk.recorder = Recorder(load_config(config))
    trunk.recorder.start()


def call_unreachable(trunk) -> tuple[float, str]:
    """An incoming call from SIPp that must end in a 503 (the scenario checks its Warning); how
    long it took, and the Warning."""
    started = time.monotonic()
    caller = sipp("uac_unavailable.xml", trunk.folder, trunk.caller_port, trunk.media[0],
                  remote=f"{HOST}:{trunk.trunk_port}", extra=("-trace_logs",))
    finish(caller, trunk.folder)
    took = time.monotonic() - started
    [log] = trunk.folder.glob("uac_unavailable_*_logs.log")
    return took, log.read_text()


def failures(caplog) -> list[str]:
    """The connection failures the relay logged."""
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("SIP over")]


def assert_missed(trunk) -> None:
    """The call is in the catalogue as missed, with the 503."""
    [call] = trunk.calls()
    assert (call["direction"], call["state"], call["end_reason"]) == ("incoming", "missed", "503 Service Unavailable")


def test_a_pbx_that_refuses_the_connection_gets_the_caller_a_503_at_once(trunk, caplog):
    closed = free_port()                                    # nothing listens there
    pbx_over(trunk, "tcp", closed)
    took, log = call_unreachable(trunk)

    assert took < 2.0
    assert f"SIP over TCP to {HOST}:{closed} failed: Connection refused" in log
    assert failures(caplog) == [f"SIP over TCP to {HOST}:{closed} failed: Connection refused"]   # the ACK stayed
    assert_missed(trunk)


def test_a_pbx_whose_certificate_is_not_trusted_gets_the_caller_a_503_at_once(trunk, caplog, tmp_path):
    ours = make_certificates(tmp_path / "ours")
    stranger = make_certificates(tmp_path / "stranger", "another CA")
    port = free_port()
    server = subprocess.Popen([OPENSSL, "s_server", "-quiet", "-accept", f"{HOST}:{port}",
                               "-cert", str(stranger / "cert.pem"), "-key", str(stranger / "key.pem")],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: socket.socket().connect_ex((HOST, port)) == 0, 5)
        pbx_over(trunk, "tls", port, trusted=ours)
        took, log = call_unreachable(trunk)
    finally:
        server.kill()
        server.wait()

    assert took < 2.0
    # s_server sends its certificate alone: nothing links it to a CA the trunk trusts.
    assert f"SIP over TLS to {HOST}:{port} failed: unable to get local issuer certificate" in log
    assert failures(caplog) == [f"SIP over TLS with {HOST}:{port} failed: unable to get local issuer certificate"]
    assert_missed(trunk)


def test_a_pbx_that_never_finishes_the_handshake_gets_the_caller_a_503_after_the_connect_timeout(
        trunk, caplog, monkeypatch):
    monkeypatch.setattr(transport, "CONNECT_TIMEOUT_S", 1.0)
    silent = socket.socket()                    # the kernel accepts the connection; nobody speaks TLS
    silent.bind((HOST, 0))
    silent.listen()
    try:
        pbx_over(trunk, "tls", silent.getsockname()[1], trusted=make_certificates(trunk.folder / "ca"))
        took, log = call_unreachable(trunk)
    finally:
        silent.close()

    assert 1.0 <= took < 3.0
    assert "failed: no answer in 1 s" in log
    assert_missed(trunk)


def test_a_stun_server_that_does_not_answer_leaves_the_side_on_its_own_address_and_calls_go_through(trunk, caplog):
    write_pcap(trunk.folder / "caller.pcap", tone(CALLER_HZ, 2.0, 0.5), g711.PCMA, 0x1111)
    write_pcap(trunk.folder / "callee.pcap", tone(CALLEE_HZ, 2.0, 0.5), g711.PCMA, 0x2222)
    silent = free_port()
    config = trunk.config()
    config.write_text(config.read_text().replace("[sip_trunk.trunk]\n", f'[sip_trunk.trunk]\nstun_server = "{HOST}:{silent}"\n'))
    started = time.monotonic()
    trunk.recorder = Recorder(load_config(config))
    trunk.recorder.start()
    assert time.monotonic() - started < 8.0                      # the request is given up after 3.5 s
    assert f"STUN server {HOST}:{silent} did not tell the public address: STUN transaction timed out" in caplog.text
    call_through(trunk, "uac.xml", "uas.xml", 2000)
    [call] = trunk.calls()
    assert (call["state"], call["channels"]) == ("complete", 2)
