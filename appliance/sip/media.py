"""The RTP anchor: each side of a call sends its RTP (and RTCP) to a socket of the appliance, which
relays it to the other side and hands a copy to the call's recording.

What leaves toward a side is what the recording keeps in that flow's channel: while the notice
plays toward the caller, the callee's packets are not relayed to the caller but the notice is
(and recorded in their place). Whatever the source, a side gets one stream: the notice and the
packets relayed after it carry one SSRC, one run of sequence numbers and timestamps that follow
the clock. The far end's address comes from its SDP; when its packets come from another host (a
phone behind NAT that announced its private address), the anchor answers where they come from
instead.
"""

import logging
import random
import socket
import struct
import time
from dataclasses import dataclass, field

from appliance.sip.codecs import RTP_CLOCK
from appliance.sip.sdp import Media
from appliance.sip.srtp import Crypto, Srtp

log = logging.getLogger(__name__)

RTP_VERSION = 2
PACKET_BYTES = 2048
DRAIN_MAX = 64          # packets read per wake-up of one socket, so one stream cannot starve the rest
NOTICE_PACKET_S = 0.02  # 20 ms packets, the usual ptime
TIMESTAMP_GRID = 80     # 10 ms: a spliced stream's timestamps move on in steps of the shortest ptime
RTCP_SR, RTCP_RR, RTCP_SDES, RTCP_BYE = 200, 201, 202, 203


class NoPortsError(OSError):
    """No free pair of RTP/RTCP ports is left in the configured range."""


@dataclass(frozen=True)
class Rtp:
    """The fields of an RTP packet the recording needs."""

    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes


def parse_rtp(data: bytes) -> Rtp | None:
    """Read an RTP packet (RFC 3550: CSRCs, header extension, padding); None if it is not one."""
    if len(data) < 12 or data[0] >> 6 != RTP_VERSION:
        return None
    first, second, sequence, timestamp, ssrc = struct.unpack_from("!BBHII", data)
    start = 12 + 4 * (first & 0x0F)
    if first & 0x10:                             # header extension
        if len(data) < start + 4:
            return None
        start += 4 + 4 * struct.unpack_from("!H", data, start + 2)[0]
    end = len(data)
    if first & 0x20 and end > start:             # padding, its length in the last byte
        end -= data[-1]
    if end < start:
        return None
    return Rtp(second & 0x7F, sequence, timestamp, ssrc, data[start:end])


def rtp_packet(payload_type: int, sequence: int, timestamp: int, ssrc: int, payload: bytes,
               marker: bool = False) -> bytes:
    """An RTP packet without CSRCs or extension."""
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | payload_type, sequence & 0xFFFF,
                       timestamp & 0xFFFFFFFF, ssrc) + payload


class OutStream:
    """What leaves toward one side, as one RTP stream, whatever it comes from.

    The first stream toward the side (the other side's, or the notice) goes out as it is; when
    another takes over (the other side's audio after the notice, a beep, a new SSRC after a
    transfer), its packets are renumbered to go on where the last packet left off: the same SSRC,
    the next sequence number, a timestamp as far on as the time that passed, and the marker bit
    that tells the phone's jitter buffer a talkspurt starts. A phone that saw the SSRC change at the
    notice's end logged it and dropped the packet after the switch; older phones clicked."""

    def __init__(self):
        self.ssrc: int | None = None
        self.source: tuple[str, int] | None = None      # (origin, SSRC) of the stream carried now
        self.sequence_shift = self.timestamp_shift = 0
        self.last_sequence = self.last_timestamp = 0
        self.last_at = 0.0

    def carry(self, packet: bytes, origin: str, now: float) -> bytes:
        """The RTP `packet` from `origin` ("notice", or the side it is relayed from), as it goes out."""
        if len(packet) < 12 or packet[0] >> 6 != RTP_VERSION:
            return packet
        sequence, timestamp, ssrc = struct.unpack_from("!HII", packet, 2)
        marker = False
        if (origin, ssrc) != self.source:
            if self.ssrc is None:
                self.ssrc = ssrc
            else:
                steps = max(1, round((now - self.last_at) * RTP_CLOCK / TIMESTAMP_GRID))
                self.sequence_shift = (self.last_sequence + 1 - sequence) & 0xFFFF
                self.timestamp_shift = (self.last_timestamp + steps * TIMESTAMP_GRID - timestamp) & 0xFFFFFFFF
                marker = True
            self.source = (origin, ssrc)
        self.last_sequence = (sequence + self.sequence_shift) & 0xFFFF
        self.last_timestamp = (timestamp + self.timestamp_shift) & 0xFFFFFFFF
        self.last_at = now
        if not marker and ssrc == self.ssrc and not self.sequence_shift and not self.timestamp_shift:
            return packet
        header = bytearray(packet[:12])
        struct.pack_into("!HII", header, 2, self.last_sequence, self.last_timestamp, self.ssrc)
        if marker:
            header[1] |= 0x80
        return bytes(header) + packet[12:]

    def carry_rtcp(self, data: bytes, origin: str) -> bytes | None:
        """An RTCP compound packet from `origin`, its sender named as the stream it sends under
        (the SSRC of sender and receiver reports, of the first SDES chunk and of a BYE; the RTP
        timestamp of a sender report moved as its packets are); None while another stream is
        carried (the notice): it reports on packets this side does not get."""
        if self.source is None:
            return data
        if self.source[0] != origin:
            return None
        if self.ssrc == self.source[1]:
            return data
        out, at = bytearray(data), 0
        while at + 8 <= len(out):
            kind, words = out[at + 1], struct.unpack_from("!H", out, at + 2)[0]
            if kind in (RTCP_SR, RTCP_RR, RTCP_SDES, RTCP_BYE) and \
                    struct.unpack_from("!I", out, at + 4)[0] == self.source[1]:
                struct.pack_into("!I", out, at + 4, self.ssrc)
                if kind == RTCP_SR and at + 20 <= len(out):      # after the SSRC, the NTP time, then this
                    timestamp = struct.unpack_from("!I", out, at + 16)[0]
                    struct.pack_into("!I", out, at + 16, (timestamp + self.timestamp_shift) & 0xFFFFFFFF)
            at += 4 * (words + 1)
        return bytes(out)


class PortPool:
    """Even RTP ports (RTCP on the next odd one) from a range, bound on demand; ports in use by
    anything else are skipped."""

    def __init__(self, low: int, high: int):
        self.low, self.high = low + (low % 2), high
        self._next = self.low

    def open_pair(self, host: str) -> tuple[socket.socket, socket.socket]:
        """Bind an RTP and an RTCP socket on `host`; raise NoPortsError when none is free."""
        count = (self.high - self.low) // 2 + 1
        for _ in range(count):
            port = self._next
            self._next = self.low if port + 2 > self.high else port + 2
            rtp = _udp_socket(host, port)
            if rtp is None:
                continue
            rtcp = _udp_socket(host, port + 1)
            if rtcp is None:
                rtp.close()
                continue
            return rtp, rtcp
        raise NoPortsError(f"no free RTP port pair on {host} in {self.low}-{self.high}")


def _udp_socket(host: str, port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    return sock


@dataclass
class Leg:
    """One side's end of a call's media: the sockets that side sends to, and where it wants RTP."""

    side: str
    rtp: socket.socket
    rtcp: socket.socket
    remote: tuple[str, int] | None = None
    remote_rtcp: tuple[str, int] | None = None
    media: Media | None = None
    last_received: float = field(default_factory=time.monotonic)
    local: tuple[str, int] = ()             # the appliance's RTP address for this side
    outgoing: OutStream = field(default_factory=OutStream)     # what the appliance sends it
    keys: dict[str, bytes] = field(default_factory=dict)       # the appliance's SRTP keys toward it, by suite
    decrypt: Srtp | None = None             # what it sends, with its key (SRTP)
    encrypt: Srtp | None = None             # what goes to it, with the appliance's key (SRTP)

    def __post_init__(self):
        self.local = self.rtp.getsockname()[:2]

    def described(self, media: Media) -> None:
        """This side's latest SDP: send its RTP where it asks (until its packets say otherwise),
        and decrypt what it sends with the key it gave, if any."""
        self.media = media
        if media.port and media.address not in ("0.0.0.0", "::"):
            self.remote = (media.address, media.port)
            self.remote_rtcp = (media.address, media.port + 1)
        if media.crypto != (self.decrypt.crypto if self.decrypt else None):
            self.decrypt = Srtp(media.crypto, inbound=True) if media.crypto else None

    def sent(self, crypto: Crypto | None) -> None:
        """The SDP the appliance sent this side gave it `crypto`: encrypt what goes to it with
        that key from now (a new session only for a new key: the stream's packet index runs on)."""
        if crypto != (self.encrypt.crypto if self.encrypt else None):
            self.encrypt = Srtp(crypto, inbound=False) if crypto else None

    def send(self, packet: bytes, origin: str, now: float) -> None:
        """Send an RTP packet to this side, in its one outgoing stream, encrypted if it takes
        SRTP; a side that is not there (yet) loses it, as on a line."""
        if self.remote is None:
            return
        packet = self.outgoing.carry(packet, origin, now)
        if self.encrypt is not None and (packet := self.encrypt.rtp(packet)) is None:
            return
        try:
            self.rtp.sendto(packet, self.remote)
        except OSError:
            pass


class NoticePlayer:
    """Sends a pre-encoded sound toward one side in real time, one 20 ms payload a packet, and
    hands each packet's PCM (at `rate`, the call's recording rate) to `on_sent`."""

    def __init__(self, loop, leg: Leg, payloads: list[bytes], pcm: bytes, rate: int, payload_type: int,
                 on_sent, on_done):
        self.loop, self.leg, self.payloads, self.pcm = loop, leg, payloads, pcm
        self.payload_type, self.on_sent, self.on_done = payload_type, on_sent, on_done
        self.ssrc = random.getrandbits(32)
        self.sequence = random.getrandbits(16)
        self.timestamp0 = random.getrandbits(32)
        self.samples = int(RTP_CLOCK * NOTICE_PACKET_S)
        self.pcm_step = 2 * round(rate * NOTICE_PACKET_S)       # s16 bytes of one packet, as recorded
        self.sent = 0
        self.started = time.monotonic()
        self.handle = None
        self.stopped = False

    def start(self) -> None:
        """Send the first packet now, the others on their beat."""
        self._send()

    def stop(self) -> None:
        """Stop sending (the call ended)."""
        self.stopped = True
        if self.handle is not None:
            self.handle.cancel()

    def _send(self) -> None:
        if self.stopped:
            return
        at = self.sent * self.samples
        if self.sent >= len(self.payloads):
            self.stopped = True
            self.on_done(self.started + at / RTP_CLOCK)
            return
        timestamp = self.timestamp0 + at
        packet = rtp_packet(self.payload_type, self.sequence + self.sent, timestamp, self.ssrc,
                            self.payloads[self.sent], marker=self.sent == 0)
        self.leg.send(packet, "notice", time.monotonic())
        self.on_sent(self.ssrc, timestamp, self.pcm[self.sent * self.pcm_step:(self.sent + 1) * self.pcm_step],
                     self.started + at / RTP_CLOCK)
        self.sent += 1
        self.handle = self.loop.call_at(self._loop_time(self.started + self.sent * NOTICE_PACKET_S), self._send)

    def _loop_time(self, monotonic_t: float) -> float:
        # asyncio's clock is time.monotonic() on Linux; stay correct if it is not.
        return self.loop.time() + (monotonic_t - time.monotonic())


class MediaSession:
    """The media of one call: a leg per side, relayed to each other through an event loop.

    `tap(side, packet, arrival)` gets every packet relayed from `side` (the recording's feed)."""

    def __init__(self, loop, legs: dict[str, Leg]):
        self.loop = loop
        self.legs = legs
        self.tap = None
        self.notice: dict[str, NoticePlayer] = {}   # by the side it plays toward
        self.closed = False
        for leg in legs.values():
            other = self._other(leg.side)
            loop.add_reader(leg.rtp.fileno(), self._relay_rtp, leg, other)
            loop.add_reader(leg.rtcp.fileno(), self._relay_rtcp, leg, other)

    def _other(self, side: str) -> Leg:
        return next(leg for name, leg in self.legs.items() if name != side)

    def drain(self) -> None:
        """Relay every RTP packet waiting in the legs' sockets now: before the recording takes
        its audio up to a moment, what arrived before it is read (after a stall of the loop,
        some sockets' packets wait longer than the jitter allowance)."""
        if not self.closed:
            for leg in self.legs.values():
                self._relay_rtp(leg, self._other(leg.side))

    def _relay_rtp(self, leg: Leg, other: Leg) -> None:
        for _ in range(DRAIN_MAX):
            try:
                data, source = leg.rtp.recvfrom(PACKET_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue                # an ICMP error from an earlier send: nothing to read
            if leg.decrypt is not None and (data := leg.decrypt.rtp(data)) is None:
                continue                # forged, replayed or damaged: as if it never came
            now = time.monotonic()
            leg.last_received = now
            if leg.remote is None or leg.remote[0] != source[0]:
                leg.remote = source[:2]         # behind NAT: answer where its packets come from
            if other.side in self.notice or other.remote is None:
                continue
            other.send(data, leg.side, now)
            if self.tap is not None:
                self.tap(leg.side, data, now)

    def _relay_rtcp(self, leg: Leg, other: Leg) -> None:
        for _ in range(DRAIN_MAX):
            try:
                data, source = leg.rtcp.recvfrom(PACKET_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            if leg.decrypt is not None and (data := leg.decrypt.rtcp(data)) is None:
                continue
            if leg.remote_rtcp is None or leg.remote_rtcp[0] != source[0]:
                leg.remote_rtcp = source[:2]
            if (data := other.outgoing.carry_rtcp(data, leg.side)) is None:
                continue
            if other.encrypt is not None and (data := other.encrypt.rtcp(data)) is None:
                continue
            if other.remote_rtcp is not None:
                try:
                    other.rtcp.sendto(data, other.remote_rtcp)
                except OSError:
                    pass

    def play(self, toward: str, payloads: list[bytes], pcm: bytes, rate: int, payload_type: int,
             on_sent, on_done) -> None:
        """Play a notice (20 ms `payloads` in `payload_type`, and its `pcm` as recorded, at `rate`)
        toward one side instead of what the other side sends, until it ends."""
        def done(t: float) -> None:
            self.notice.pop(toward, None)
            on_done(t)
        player = NoticePlayer(self.loop, self.legs[toward], payloads, pcm, rate, payload_type, on_sent, done)
        self.notice[toward] = player
        player.start()

    def close(self) -> None:
        """Stop relaying and free the ports."""
        if self.closed:
            return
        self.closed = True
        for player in list(self.notice.values()):
            player.stop()
        self.notice.clear()
        for leg in self.legs.values():
            for sock in (leg.rtp, leg.rtcp):
                self.loop.remove_reader(sock.fileno())
                sock.close()
