"""The pieces of the SIP trunk that need no network: SIP messages, SDP rewriting, G.711, the
stereo timeline and the renumbering of what is relayed after a notice."""

import base64
import math
import struct

import pytest

from appliance.sip import g711
from appliance.sip.media import OutStream, parse_rtp, rtp_packet
from appliance.sip.message import NameAddr, SipError, Uri, Via, parse, response
from appliance.sip.sdp import SdpError, anchor
from appliance.sip.stereo import Timeline

INVITE = (b"INVITE sip:0475123456@203.0.113.5 SIP/2.0\r\n"
          b"v: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKabc;rport, SIP/2.0/TCP 10.0.0.1;branch=z9hG4bKdef\r\n"
          b"f: \"Shop, Front desk\" <sip:201@192.0.2.7>;tag=1\r\n"
          b"t: <sip:0475123456@203.0.113.5>\r\n"
          b"i: abc@192.0.2.7\r\n"
          b"CSeq: 7 INVITE\r\n"
          b"Subject: a header folded\r\n  over two lines\r\n"
          b"m: <sip:201@192.0.2.7:5060>;expires=60\r\n"
          b"c: application/sdp\r\n"
          b"l: 4\r\n\r\nv=0\r\nextra")


def test_a_message_reads_compact_and_folded_headers_and_writes_them_out_in_full():
    message = parse(INVITE)
    assert (message.method, message.uri, message.cseq, message.call_id) == \
        ("INVITE", "sip:0475123456@203.0.113.5", (7, "INVITE"), "abc@192.0.2.7")
    assert len(message.get_all("via")) == 2 and message.body == b"v=0\r"
    assert message.get("subject") == "a header folded over two lines"
    assert NameAddr.parse(message.get("from")).display == '"Shop, Front desk"'
    again = parse(message.to_bytes())
    assert again.headers == message.headers and again.body == message.body
    assert b"Call-ID: abc@192.0.2.7\r\n" in message.to_bytes() and b"Content-Length: 4\r\n" in message.to_bytes()


def test_a_response_goes_where_the_via_says_received_and_rport_first():
    via = Via.parse("SIP/2.0/UDP 192.0.2.7:5070;branch=z9hG4bKabc;rport=40000;received=198.51.100.2")
    assert via.reply_address() == ("198.51.100.2", 40000) and via.branch == "z9hG4bKabc"
    assert Via.parse("SIP/2.0/TCP phone.local").reply_address() == ("phone.local", 5060)
    reply = response(parse(INVITE), 486, to_tag="x1")
    assert reply.status == 486 and NameAddr.parse(reply.get("to")).tag == "x1"
    assert reply.get_all("via") == parse(INVITE).get_all("via")


@pytest.mark.parametrize("data, status", [
    (b"garbage\r\n\r\n", None),
    (INVITE.replace(b"v: SIP/2.0/UDP", b"v: SIP/3.0/UDP"), None),          # no Via to answer to
    (INVITE.replace(b"i: abc@192.0.2.7\r\n", b""), 400),
    (INVITE.replace(b"CSeq: 7 INVITE", b"CSeq: 7 BYE"), 400),
    (INVITE.replace(b"l: 4", b"l: 40"), 400),
    (INVITE.replace(b"l: 4", b"l: four"), 400),
    (INVITE.replace(b"t: <sip:0475123456@203.0.113.5>", b"t: <sip:0475123456@203.0.113.5"), 400),
    (INVITE.replace(b"Subject:", b"Sub ject:"), None),
    (INVITE.replace(b"SIP/2.0\r\n", b"SIP/2.0 extra\r\n", 1), None),
    (b"SIP/2.0 99 Odd\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n\r\n", None),
])
def test_a_broken_message_is_refused_with_the_status_it_deserves(data, status):
    with pytest.raises(SipError) as caught:
        parse(data)
    assert caught.value.status == status


def test_uris_keep_their_parts():
    uri = Uri.parse("sip:+3225551234@[2001:db8::1]:5080;transport=tcp;user=phone")
    assert (uri.user, uri.host, uri.port, uri.params["transport"]) == ("+3225551234", "2001:db8::1", 5080, "tcp")
    assert str(uri) == "sip:+3225551234@[2001:db8::1]:5080;transport=tcp;user=phone"
    assert Uri.parse("tel:+3225551234;phone-context=example").user == "+3225551234"


OFFER = ("v=0\r\no=- 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\nt=0 0\r\n"
         "a=ice-ufrag:x\r\n"
         "m=audio 49170 RTP/AVP 18 0 8 101\r\na=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\n"
         "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=rtcp:49171\r\na=sendonly\r\n"
         "m=video 51372 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n").encode()


def test_an_offer_is_anchored_to_the_appliance_and_keeps_only_what_can_be_recorded():
    body, media, _ = anchor(OFFER, "198.51.100.1", 20000)
    text = body.decode()
    assert (media.address, media.port, media.payloads, media.telephone_event) == \
        ("192.0.2.7", 49170, (18, 0, 8, 101), 101)
    assert media.direction == "sendonly" and media.on_hold and (media.codec, media.playable) == (18, g711.PCMU)
    # G.729 stays, with its Annex B parameter, behind the codecs the notice can be sent in.
    assert "m=audio 20000 RTP/AVP 0 8 18 101\r\n" in text and "m=video 0 RTP/AVP 96" in text
    assert "a=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\n" in text
    assert "192.0.2.7" not in text and "c=IN IP4 198.51.100.1" in text
    assert "a=rtcp:" not in text and "ice-ufrag" not in text
    assert "a=fmtp:101 0-15" in text


@pytest.mark.parametrize("formats, listed, codec, playable", [
    ("9 0 101", "9 0 101", 9, 9),               # wideband first stays first
    ("18 3 101", "18 3 101", 18, None),         # nothing the notice can be sent in
    ("3 97 9 13", "9 3 13", 3, 9),              # an unknown dynamic type goes; comfort noise stays
])
def test_recordable_codecs_are_kept_those_the_notice_can_be_sent_in_first(formats, listed, codec, playable):
    offer = f"v=0\r\nc=IN IP4 192.0.2.7\r\nm=audio 4000 RTP/AVP {formats}\r\na=rtpmap:97 opus/48000/2\r\n" \
            "a=rtpmap:101 telephone-event/8000\r\n"
    body, media, _ = anchor(offer.encode(), "198.51.100.1", 20000)
    assert f"m=audio 20000 RTP/AVP {listed}\r\n" in body.decode() and "opus" not in body.decode()
    assert (media.codec, media.playable) == (codec, playable)


def test_an_srtp_offer_goes_on_with_the_appliances_own_key_and_its_answer_comes_back_with_another():
    key = base64.b64encode(bytes(range(30))).decode()
    offer = (f"v=0\r\nc=IN IP4 192.0.2.7\r\nm=audio 4000 RTP/SAVP 8\r\n"
             f"a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:{key}|2^31\r\na=crypto:4 NULL_CIPHER inline:{key}\r\n").encode()
    toward_callee: dict = {}
    body, offered, sent = anchor(offer, "198.51.100.1", 20000, toward_callee, None)
    assert offered.crypto.key == bytes(range(30)) and offered.secure_profile
    assert (sent.tag, sent.suite, sent.key) == (3, "AES_CM_128_HMAC_SHA1_32", toward_callee["AES_CM_128_HMAC_SHA1_32"])
    assert sent.key != offered.crypto.key and key not in body.decode() and "NULL_CIPHER" not in body.decode()
    assert "m=audio 20000 RTP/SAVP 8\r\n" in body.decode() and sent.line() in body.decode()
    # The callee answers in plain RTP: the caller, who asked for SRTP, still gets it, from the appliance.
    answer = b"v=0\r\nc=IN IP4 192.0.2.9\r\nm=audio 5000 RTP/AVP 8\r\n"
    toward_caller: dict = {}
    body, answered, sent = anchor(answer, "198.51.100.1", 20002, toward_caller, offered)
    assert answered.crypto is None and "m=audio 20002 RTP/SAVP 8" in body.decode()
    assert (sent.tag, sent.suite) == (3, "AES_CM_128_HMAC_SHA1_32") and sent.key == toward_caller[sent.suite]
    assert anchor(answer, "198.51.100.1", 20002, toward_caller, offered)[2] == sent      # the same key again


@pytest.mark.parametrize("sdp, status", [
    (b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 4 97\r\na=rtpmap:97 opus/48000/2\r\n", 488),  # none recordable
    (b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=video 1 RTP/AVP 96\r\n", 488),          # no audio
    (b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/SAVP 0\r\n", 488),          # SRTP without a key (DTLS)
    (b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 "
     b"inline:" + base64.b64encode(bytes(30)) + b"|2^20|1:4\r\n", 488),                      # with an MKI
    (b"v=0\r\nm=audio 1 RTP/AVP 0\r\n", 400),                                # no address
    (b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio x RTP/AVP 0\r\n", 400),
    (b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP zero\r\n", 400),
    (b"c=IN IP4 1.2.3.4\r\n", 400),
    (b"v=0\r\nthis is not sdp\r\n", 400),
])
def test_an_sdp_the_appliance_cannot_anchor_is_refused(sdp, status):
    with pytest.raises(SdpError) as caught:
        anchor(sdp, "198.51.100.1", 20000)
    assert caught.value.status == status


def test_an_offer_without_a_recordable_codec_names_those_the_appliance_records():
    offer = b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 1 RTP/AVP 97\r\na=rtpmap:97 opus/48000/2\r\n"
    with pytest.raises(SdpError) as caught:
        anchor(offer, "198.51.100.1", 20000)
    assert caught.value.status == 488 and "(PCMU, PCMA, G722, G729, GSM)" in str(caught.value)


def test_g711_decodes_and_encodes_like_the_itu_tables():
    assert g711.ulaw_to_linear(0xFF) == 0 and g711.ulaw_to_linear(0x00) == -32124
    assert g711.alaw_to_linear(0xD5) == 8 and g711.alaw_to_linear(0x2A) == -32256
    for law in g711.LAWS:
        pcm = g711.decode(bytes(range(256)), law)
        assert g711.decode(g711.encode(pcm, law), law) == pcm      # every level survives a round trip
    sine = struct.pack("<160h", *(int(8000 * math.sin(2 * math.pi * 440 * i / 8000)) for i in range(160)))
    back = struct.unpack("<160h", g711.decode(g711.encode(sine, g711.PCMA), g711.PCMA))
    assert max(abs(a - b) for a, b in zip(back, struct.unpack("<160h", sine))) < 8000 * 0.04


def frames(value: int, count: int = 160) -> bytes:
    return struct.pack(f"<{count}h", *([value] * count))


def test_the_timeline_places_packets_by_timestamp_and_leaves_silence_for_what_is_missing():
    timeline = Timeline(start=100.0)
    timeline.put(0, ssrc=1, timestamp=5000, pcm=frames(1), arrival=100.0)
    timeline.put(0, 1, 5320, frames(3), 100.06)              # the packet at 5160 was lost
    timeline.put(0, 1, 5160, frames(2), 100.5)               # … until it came late, still in time
    timeline.put(1, ssrc=9, timestamp=77, pcm=frames(7), arrival=100.02)
    out = struct.unpack("<960h", timeline.take(480))
    left, right = out[0::2], out[1::2]
    assert left[:160] == (1,) * 160 and left[160:320] == (2,) * 160 and left[320:] == (3,) * 160
    assert right[:160] == (0,) * 160 and right[160:320] == (7,) * 160 and right[320:] == (0,) * 160
    timeline.put(0, 1, 5160, frames(9), 100.1)                # far too late: its place is gone
    timeline.put(0, 1, 5000 + 8000 * 5, frames(4), 100.1)     # a jump of 5 s: anchored on arrival
    timeline.mute(900)
    timeline.unmute(1000)
    out = struct.unpack(f"<{2 * 1160}h", timeline.take(1640))[0::2]
    assert set(out[:800 - 480]) == {0} and out[800 - 480:900 - 480] == (4,) * 100
    assert set(out[900 - 480:1160]) == {0}


def test_after_the_notice_the_relayed_stream_and_its_rtcp_go_on_under_the_notices_ssrc():
    out = OutStream()
    for n in range(50):                     # one second of notice, 20 ms a packet
        out.carry(rtp_packet(8, 100 + n, 5000 + 160 * n, 0xAAAA, bytes(160), marker=n == 0), "notice", n * 0.02)
    relayed = parse_rtp(out.carry(rtp_packet(8, 7, 90000, 0xBBBB, bytes(160)), "pbx", 1.0))
    assert (relayed.ssrc, relayed.sequence, relayed.timestamp) == (0xAAAA, 150, 5000 + 160 * 50)
    following = parse_rtp(out.carry(rtp_packet(8, 8, 90160, 0xBBBB, bytes(160)), "pbx", 1.02))
    assert (following.ssrc, following.sequence, following.timestamp) == (0xAAAA, 151, 5000 + 160 * 51)

    sender_report = struct.pack("!BBHIIIIII", 0x80, 200, 6, 0xBBBB, 1, 2, 90160, 51, 8160)
    sdes = struct.pack("!BBHIBB6s", 0x81, 202, 3, 0xBBBB, 1, 6, b"pbx@it") + bytes(2)
    fields = struct.unpack_from("!BBHIIIIII", out.carry_rtcp(sender_report + sdes, "pbx"))
    assert fields[3] == 0xAAAA and fields[6] == 5000 + 160 * 51     # named and timed as the RTP it reports
    assert struct.unpack_from("!I", out.carry_rtcp(sender_report + sdes, "pbx"), 32)[0] == 0xAAAA
    assert out.carry_rtcp(sender_report, "trunk") is None       # reports on a stream this side does not get
