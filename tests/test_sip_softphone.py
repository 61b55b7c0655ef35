"""A real softphone (baresip) as the operator's caller through a SIP trunk of the recorder, with
SIPp as the shop's PBX: it hears the notice and then the shop in one RTP stream, and the call is
recorded each side in its channel. Then softphones on both sides: in SRTP, over TLS, calling out to
an operator found by NAPTR and SRV records in a DNS server of the test's own (dnsmasq), and on IPv6."""

import shutil
import time

import pytest

from appliance.config import load_config
from appliance.doctor import FAIL, check_trunk_peers
from appliance.recorder import Recorder

from sipp.baresip import BARESIP, Baresip
from sipp.certs import make_certificates
from sipp.harness import HOST, SIPP_PCAPS, finish, free_port, pcap_audio, read_stereo, sipp
from test_sip import CALLEE_HZ, CALLER_HZ, NOTICE_HZ, NOTICE_S, best_match, levels, trunk  # noqa: F401 (fixture)
from test_sip_dns_ipv6 import dns  # noqa: F401 (fixture)
from conftest import RATE, tone, wait_for

pytestmark = pytest.mark.skipif(shutil.which(BARESIP) is None, reason="baresip is not installed")


def test_a_softphone_calling_in_hears_the_notice_then_the_shop_in_one_stream_and_is_recorded(trunk):
    shutil.copy(SIPP_PCAPS / "g711a.pcap", trunk.folder / "callee.pcap")      # speech from the shop
    trunk.start()
    phone = Baresip(trunk.folder / "baresip", tone(CALLER_HZ, 8.0, 0.5))
    shop = sipp("uas.xml", trunk.folder, trunk.phone_port, trunk.media[1])
    time.sleep(0.2)
    phone.call(f"sip:shop@{HOST}:{trunk.trunk_port}", 6)
    finish(shop, trunk.folder)

    assert phone.said("Call established") and not phone.said("SSRC changed")
    heard = phone.heard()
    assert levels(heard, 0.05, NOTICE_S - 0.05)[NOTICE_HZ] > 0.3                 # the notice first
    speech = pcap_audio(trunk.folder / "callee.pcap")
    assert best_match(heard[int(1.5 * RATE):int(2.5 * RATE)], speech) > 0.9      # then the shop

    [call] = trunk.calls()
    assert (call["direction"], call["state"], call["channels"]) == ("incoming", "complete", 2)
    left, right = read_stereo(trunk.folder / "data" / call["file"])
    assert levels(left, 1.5, 4.0)[CALLER_HZ] > 0.3                             # the softphone's side
    assert best_match(right[int(1.5 * RATE):int(2.5 * RATE)], speech) > 0.9    # the shop's side


def test_an_srtp_call_between_two_softphones_is_recorded_in_the_clear_and_each_hears_the_other(trunk):
    shop = Baresip(trunk.folder / "shop", tone(CALLEE_HZ, 8.0, 0.5), user="shop", srtp=True, answer=True)
    trunk.phone_port = shop.port                    # the PBX's side: a softphone that answers
    trunk.start()
    shop.start(9)
    phone = Baresip(trunk.folder / "operator", tone(CALLER_HZ, 8.0, 0.5), srtp=True)
    phone.call(f"sip:shop@{HOST}:{trunk.trunk_port}", 6)
    shop.wait()

    assert phone.said("Call established") and shop.said("Call established")
    # Each side hears the other through the appliance, which re-encrypts with its own keys.
    heard_by_caller, heard_by_shop = phone.heard(), shop.heard()
    assert levels(heard_by_caller, 0.05, NOTICE_S - 0.05)[NOTICE_HZ] > 0.3       # the notice, encrypted too
    assert levels(heard_by_caller, NOTICE_S + 0.5, 4.0)[CALLEE_HZ] > 0.3
    assert levels(heard_by_shop, NOTICE_S + 0.5, 4.0)[CALLER_HZ] > 0.3
    [call] = trunk.calls()
    assert (call["direction"], call["state"], call["channels"]) == ("incoming", "complete", 2)
    left, right = read_stereo(trunk.folder / "data" / call["file"])
    assert levels(left, 1.5, 4.0)[CALLER_HZ] > 0.3 and levels(left, 1.5, 4.0)[CALLEE_HZ] < 0.05
    assert levels(right, 1.5, 4.0)[CALLEE_HZ] > 0.3 and levels(right, 1.5, 4.0)[CALLER_HZ] < 0.05


def tls_trunk(trunk, shop: Baresip, certificates, trusted) -> int:
    """The trunk with SIP over TLS on both sides: the operator's side accepts TLS with the
    appliance's certificate (on the port returned); the PBX side (the softphone `shop`) is reached
    over TLS, its certificate checked against `trusted`."""
    config, tls_port = trunk.config(), free_port()
    text = config.read_text()
    text = text.replace("[sip_trunk.trunk]\n", f'[sip_trunk.trunk]\ntls_certificate = "{certificates / "cert.pem"}"\n'
                                                f'tls_key = "{certificates / "key.pem"}"\ntls_port = {tls_port}\n')
    operator_side, pbx_side = text.split("[sip_trunk.pbx]\n")
    pbx_side = pbx_side.replace('transport = "udp"\n', "").replace(
        f'peer = "{HOST}:{trunk.phone_port}"\n',
        f'peer = "{HOST}:{shop.tls_port}"\ntransport = "tls"\ntls_ca = "{trusted / "ca.pem"}"\n')
    config.write_text(f"{operator_side}[sip_trunk.pbx]\n{pbx_side}")
    trunk.recorder = Recorder(load_config(config))
    trunk.recorder.start()
    return tls_port


def test_a_call_over_tls_and_srtp_on_both_sides_is_recorded_and_each_side_hears_the_other(trunk):
    certificates = make_certificates(trunk.folder / "certificates")
    shop = Baresip(trunk.folder / "shop", tone(CALLEE_HZ, 8.0, 0.5), user="shop", srtp=True, answer=True,
                   tls=certificates)
    trunk_tls_port = tls_trunk(trunk, shop, certificates, trusted=certificates)
    shop.start(9)
    phone = Baresip(trunk.folder / "operator", tone(CALLER_HZ, 8.0, 0.5), srtp=True, tls=certificates)
    phone.call(f"sip:shop@{HOST}:{trunk_tls_port};transport=tls", 6)
    shop.wait()

    assert phone.said("Call established") and shop.said("Call established")
    assert levels(phone.heard(), 0.05, NOTICE_S - 0.05)[NOTICE_HZ] > 0.3
    assert levels(phone.heard(), NOTICE_S + 0.5, 4.0)[CALLEE_HZ] > 0.3
    assert levels(shop.heard(), NOTICE_S + 0.5, 4.0)[CALLER_HZ] > 0.3
    [call] = trunk.calls()
    left, right = read_stereo(trunk.folder / "data" / call["file"])
    assert levels(left, 1.5, 4.0)[CALLER_HZ] > 0.3 and levels(right, 1.5, 4.0)[CALLEE_HZ] > 0.3


def test_a_pbx_whose_certificate_is_not_trusted_is_not_called_and_the_caller_gets_a_503(trunk, caplog):
    certificates = make_certificates(trunk.folder / "certificates")
    stranger = make_certificates(trunk.folder / "another-ca", "another CA")
    shop = Baresip(trunk.folder / "shop", tone(CALLEE_HZ, 8.0, 0.5), user="shop", answer=True, tls=certificates)
    trunk_tls_port = tls_trunk(trunk, shop, certificates, trusted=stranger)
    shop.start(6)
    time.sleep(0.5)
    [config] = trunk.recorder.config.sip_trunk
    [pbx] = [r for r in check_trunk_peers(config, 2.0) if "the PBX" in r.message]
    assert pbx.status == FAIL and "TLS with" in pbx.message and "self-signed certificate in certificate chain" in pbx.message
    phone = Baresip(trunk.folder / "operator", tone(CALLER_HZ, 8.0, 0.5), tls=certificates)
    phone.start(5, f"/dial sip:shop@{HOST}:{trunk_tls_port};transport=tls")
    refused = [f"SIP over TLS with {HOST}:{shop.tls_port} failed: self-signed certificate in certificate chain"]
    assert wait_for(lambda: refused == [r.getMessage() for r in caplog.records if r.getMessage().startswith("SIP over TLS")], 10)
    phone.wait(10)              # told at once with a 503, it gives up and quits with its -t
    shop.wait()
    assert not shop.said("Call established") and not phone.said("Call established")
    assert phone.said("503 Service Unavailable")
    [call] = trunk.calls()
    assert (call["state"], call["end_reason"]) == ("missed", "503 Service Unavailable")


def test_a_softphone_calls_out_to_an_operator_found_by_srv_and_the_call_is_recorded(trunk, dns):
    speech = pcap_audio(SIPP_PCAPS / "g711a.pcap")
    operator = Baresip(trunk.folder / "operator", tone(CALLEE_HZ, 8.0, 0.5), user="0475123456", answer=True)
    dns.serve(operator.port)        # NAPTR: SIP over TCP; SRV: sip-a.operator.test on the softphone's port
    config = trunk.config(dns_servers=[f"{HOST}:{dns.port}"])
    # The operator by name only: where it is (port included) comes from the DNS server alone.
    config.write_text(config.read_text().replace(f'peer = "{HOST}:{trunk.operator_port}"\ntransport = "udp"\n',
                                                 'peer = "operator.test"\n', 1))
    trunk.recorder = Recorder(load_config(config))
    trunk.recorder.start()
    operator.start(9)
    shop = Baresip(trunk.folder / "shop", speech, user="shop")
    shop.call(f"sip:0475123456@{HOST}:{trunk.pbx_port}", 6)
    operator.wait()

    assert shop.said("Call established") and operator.said("Call established")
    heard = operator.heard()
    assert levels(heard, 0.05, NOTICE_S - 0.05)[NOTICE_HZ] > 0.3                 # the notice first
    assert best_match(heard[int(1.5 * RATE):int(2.5 * RATE)], speech) > 0.9      # then the shop
    [call] = trunk.calls()
    assert (call["direction"], call["state"], call["channels"], call["number"]) == \
        ("outgoing", "complete", 2, "0475123456")
    left, right = read_stereo(trunk.folder / "data" / call["file"])
    assert best_match(left[int(1.5 * RATE):int(2.5 * RATE)], speech) > 0.9       # the shop's side
    assert levels(right, 1.5, 4.0)[CALLEE_HZ] > 0.3                             # the operator's side


def test_softphones_on_ipv6_call_through_the_trunk_and_the_call_is_recorded(trunk):
    speech = pcap_audio(SIPP_PCAPS / "g711a.pcap")
    shop = Baresip(trunk.folder / "shop", tone(CALLEE_HZ, 8.0, 0.5), user="shop", answer=True, host="::1")
    trunk.phone_port = shop.port
    config = trunk.config()
    config.write_text(config.read_text().replace(f'"{HOST}:', '"[::1]:'))       # both sides and peers on ::1
    trunk.recorder = Recorder(load_config(config))
    trunk.recorder.start()
    shop.start(9)
    phone = Baresip(trunk.folder / "operator", speech, host="::1")
    phone.call(f"sip:shop@[::1]:{trunk.trunk_port}", 6)
    shop.wait()

    assert phone.said("Call established") and shop.said("Call established")
    assert levels(phone.heard(), 0.05, NOTICE_S - 0.05)[NOTICE_HZ] > 0.3
    assert levels(phone.heard(), NOTICE_S + 0.5, 4.0)[CALLEE_HZ] > 0.3
    assert best_match(shop.heard()[int(1.5 * RATE):int(2.5 * RATE)], speech) > 0.9
    [call] = trunk.calls()
    assert (call["direction"], call["state"], call["channels"]) == ("incoming", "complete", 2)
    left, right = read_stereo(trunk.folder / "data" / call["file"])
    assert best_match(left[int(1.5 * RATE):int(2.5 * RATE)], speech) > 0.9       # the caller's side
    assert levels(right, 1.5, 4.0)[CALLEE_HZ] > 0.3                             # the shop's side
