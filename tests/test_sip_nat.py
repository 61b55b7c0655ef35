"""The appliance behind a NAT router, as in a shop: network namespaces for the shop (the appliance
and its PBX), the router (nftables: masquerade out, the SIP and RTP ports forwarded in) and the
internet (the operator, a real softphone: baresip). With `external` set to the router's public
address, or that address asked of a STUN server on the internet (coturn), the operator reaches the
appliance for the call's signalling and media, hears the notice and the shop, and the call is
recorded both ways."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import RATE, calls_json, tone, wait_for, write_wav
from sipp.baresip import BARESIP, Baresip
from sipp.harness import SIPP_PCAPS, finish, pcap_audio, read_stereo, sipp
from test_sip import CALLER_HZ, NOTICE_HZ, NOTICE_S, best_match, levels

SHOP_IP, ROUTER_INSIDE, ROUTER_PUBLIC, OPERATOR_IP = "10.77.0.2", "10.77.0.1", "198.51.100.1", "198.51.100.9"
SIP_PORT, PBX_SIDE, PBX_PORT, RTP_PORTS = 5060, 5070, 5080, (30000, 30099)
STUN_PORT = 3478
TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"
ROUTER_RULES = f"""
table ip nat {{
    chain forward_in {{
        type nat hook prerouting priority dstnat;
        ip daddr {ROUTER_PUBLIC} udp dport {{ {SIP_PORT}, {RTP_PORTS[0]}-{RTP_PORTS[1]} }} dnat to {SHOP_IP}
    }}
    chain out {{
        type nat hook postrouting priority srcnat;
        ip saddr 10.77.0.0/24 oifname "public" masquerade
    }}
}}
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def network():
    """Three namespaces: shop ── router ── internet; yields a command prefix per namespace."""
    if os.geteuid() != 0 or shutil.which("nft") is None or shutil.which(BARESIP) is None:
        pytest.skip("needs root, nftables and baresip")
    names = {role: f"callrec-{role}-{os.getpid()}" for role in ("shop", "router", "internet")}
    try:
        for name in names.values():
            ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        for name in names.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        pytest.skip(f"no network namespaces here: {exc.stderr.decode().strip()}")
    inside = {role: ("ip", "netns", "exec", name) for role, name in names.items()}
    try:
        ip("link", "add", "lan", "netns", names["shop"], "type", "veth", "peer", "name", "inside", "netns", names["router"])
        ip("link", "add", "wan", "netns", names["internet"], "type", "veth", "peer", "name", "public",
           "netns", names["router"])
        for role, device, address in (("shop", "lan", f"{SHOP_IP}/24"), ("router", "inside", f"{ROUTER_INSIDE}/24"),
                                      ("router", "public", f"{ROUTER_PUBLIC}/24"), ("internet", "wan", f"{OPERATOR_IP}/24")):
            ip("-n", names[role], "addr", "add", address, "dev", device)
            ip("-n", names[role], "link", "set", device, "up")
        for name in names.values():
            ip("-n", name, "link", "set", "lo", "up")
        ip("-n", names["shop"], "route", "add", "default", "via", ROUTER_INSIDE)   # the internet has no way back in
        subprocess.run([*inside["router"], "sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True)
        subprocess.run([*inside["router"], "nft", "-f", "-"], input=ROUTER_RULES.encode(), check=True)
        yield inside
    finally:
        for name in names.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def write_config(folder: Path, public: str) -> Path:
    """The appliance in the shop: the operator's side on the LAN address (its public address given by
    `public`, an `external = …` or `stun_server = …` line), the PBX on loopback."""
    notice = write_wav(folder / "notice.wav", tone(NOTICE_HZ, NOTICE_S, 0.5))
    path = folder / "appliance.toml"
    path.write_text(f"""[recorder]
data_dir = "{folder / 'data'}"
format = "flac"

[[sip_trunk]]
name = "sip1"
notice = "{notice}"
rtp_port_min = {RTP_PORTS[0]}
rtp_port_max = {RTP_PORTS[1]}

[sip_trunk.trunk]
listen = "{SHOP_IP}:{SIP_PORT}"
peer = "{OPERATOR_IP}:5060"
{public}
[sip_trunk.pbx]
listen = "127.0.0.1:{PBX_SIDE}"
peer = "127.0.0.1:{PBX_PORT}"
keepalive_s = 0
""")
    return path


@pytest.mark.parametrize("told", ["external", "stun_server"])
def test_a_call_from_the_internet_through_the_shops_nat_router_is_relayed_and_recorded(network, tmp_path, told):
    shutil.copy(SIPP_PCAPS / "g711a.pcap", tmp_path / "callee.pcap")           # speech from the shop
    if told == "external":
        config = write_config(tmp_path, f'external = "{ROUTER_PUBLIC}"\n')
    else:
        # coturn as a plain STUN server on the internet: it sees the router's masquerading address.
        if shutil.which(TURNSERVER) is None:
            pytest.skip("coturn is not installed")
        stun = subprocess.Popen([*network["internet"], TURNSERVER, "-n", "--stun-only", "--no-cli", "--no-tls",
                                 "--no-dtls", "-L", OPERATOR_IP, "-p", str(STUN_PORT), "--log-file", "stdout",
                                 "--pidfile", str(tmp_path / "turnserver.pid"), "--userdb", str(tmp_path / "turndb")],
                                stdout=(tmp_path / "stun.log").open("w"), stderr=subprocess.STDOUT)
        assert wait_for(lambda: "Total General servers" in (tmp_path / "stun.log").read_text(), 10), \
            (tmp_path / "stun.log").read_text()
        config = write_config(tmp_path, f'stun_server = "{OPERATOR_IP}:{STUN_PORT}"\n')
    log = (tmp_path / "callrec.log").open("w")
    recorder = subprocess.Popen([*network["shop"], sys.executable, "-m", "appliance", "run", "--config", str(config)],
                                cwd=Path(__file__).parent.parent, stdout=log, stderr=log)
    pbx = sipp("uas.xml", tmp_path, PBX_PORT, 6000, host="127.0.0.1", prefix=network["shop"])
    try:
        assert wait_for(lambda: "relaying" in (tmp_path / "callrec.log").read_text(), 20), "the recorder did not start"
        phone = Baresip(tmp_path / "baresip", tone(CALLER_HZ, 8.0, 0.5), host=OPERATOR_IP, prefix=network["internet"])
        phone.call(f"sip:shop@{ROUTER_PUBLIC}:{SIP_PORT}", 6)
        finish(pbx, tmp_path)
        if told == "stun_server":       # the technician's check asks the STUN server as the relay does
            report = subprocess.run([*network["shop"], sys.executable, "-m", "appliance", "doctor", "--config",
                                     str(config), "--seconds", "0.5", "--json"], cwd=Path(__file__).parent.parent,
                                    capture_output=True, text=True, timeout=60,
                                    env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
            told_public = [check for check in json.loads(report.stdout)["checks"] if "STUN server" in check["message"]]
            assert told_public == [{"status": "ok", "fix": None, "message": f"sip trunk sip1: STUN server "
                                    f"{OPERATOR_IP}:{STUN_PORT} says the public address of {SHOP_IP} is {ROUTER_PUBLIC}"}]
    finally:
        recorder.send_signal(signal.SIGTERM)
        recorder.wait(30)
        pbx.kill()
        if told == "stun_server":
            stun.terminate()
            stun.wait(10)

    if told == "stun_server":
        assert f"the public address of {SHOP_IP} is {ROUTER_PUBLIC} (STUN server {OPERATOR_IP}:{STUN_PORT})" in \
            (tmp_path / "callrec.log").read_text()

    assert phone.said("Call established") and not phone.said("SSRC changed")
    heard = phone.heard()
    assert levels(heard, 0.05, NOTICE_S - 0.05)[NOTICE_HZ] > 0.3                 # the notice, through the router
    speech = pcap_audio(tmp_path / "callee.pcap")
    assert best_match(heard[int(1.5 * RATE):int(2.5 * RATE)], speech) > 0.9      # then the shop
    [call] = calls_json(tmp_path / "data")
    assert (call["direction"], call["state"], call["end_reason"]) == ("incoming", "complete", "hung up by the caller")
    left, right = read_stereo(tmp_path / "data" / call["file"])
    assert levels(left, 1.5, 4.0)[CALLER_HZ] > 0.3                             # the operator's side came in
    assert best_match(right[int(1.5 * RATE):int(2.5 * RATE)], speech) > 0.9
