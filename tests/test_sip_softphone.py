"""A real softphone (baresip) as the operator's caller through a SIP trunk of the recorder, with
SIPp as the shop's PBX: it hears the notice and then the shop in one RTP stream, and the call is
recorded each side in its channel."""

import shutil
import time

import pytest

from sipp.baresip import BARESIP, Baresip
from sipp.harness import HOST, SIPP_PCAPS, finish, pcap_audio, read_stereo, sipp
from test_sip import CALLEE_HZ, CALLER_HZ, NOTICE_HZ, NOTICE_S, best_match, levels, trunk  # noqa: F401 (fixture)
from conftest import RATE, tone

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
