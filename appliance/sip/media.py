"""The RTP anchor: each side of a call sends its RTP (and RTCP) to a socket of the appliance, which
relays it to the other side and hands a copy to the call's recording.

What leaves toward a side is what the recording keeps in that flow's channel: while the notice
plays toward the caller, the callee's packets are not relayed to the caller but the notice is
(and recorded in their place). The far end's address comes from its SDP; when its packets come
from another host (a phone behind NAT that announced its private address), the anchor answers
where they come from instead.
"""

import logging
import random
import socket
import struct
import time
from dataclasses import dataclass, field

from appliance.sip.sdp import Media

log = logging.getLogger(__name__)

RTP_VERSION = 2
PACKET_BYTES = 2048
DRAIN_MAX = 64          # packets read per wake-up of one socket, so one stream cannot starve the rest
NOTICE_PACKET_S = 0.02  # 20 ms packets, the usual G.711 ptime


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

    def __post_init__(self):
        self.local = self.rtp.getsockname()[:2]

    def described(self, media: Media) -> None:
        """This side's latest SDP: send its RTP where it asks (until its packets say otherwise)."""
        self.media = media
        if media.port and media.address not in ("0.0.0.0", "::"):
            self.remote = (media.address, media.port)
            self.remote_rtcp = (media.address, media.port + 1)


class NoticePlayer:
    """Sends pre-encoded G.711 toward one side in real time, 20 ms a packet."""

    def __init__(self, loop, leg: Leg, codes: bytes, pcm: bytes, payload_type: int, on_sent, on_done):
        self.loop, self.leg, self.codes, self.pcm = loop, leg, codes, pcm
        self.payload_type, self.on_sent, self.on_done = payload_type, on_sent, on_done
        self.ssrc = random.getrandbits(32)
        self.sequence = random.getrandbits(16)
        self.timestamp0 = random.getrandbits(32)
        self.samples = int(8000 * NOTICE_PACKET_S)
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
        if at >= len(self.codes):
            self.stopped = True
            self.on_done(self.started + at / 8000)
            return
        chunk = self.codes[at:at + self.samples]
        timestamp = self.timestamp0 + at
        packet = rtp_packet(self.payload_type, self.sequence + self.sent, timestamp, self.ssrc, chunk,
                            marker=self.sent == 0)
        if self.leg.remote is not None:
            try:
                self.leg.rtp.sendto(packet, self.leg.remote)
            except OSError:
                pass                    # a side that is not there yet loses this packet, as on a line
        self.on_sent(self.ssrc, timestamp, self.pcm[2 * at:2 * (at + len(chunk))],
                     self.started + at / 8000)
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
            now = time.monotonic()
            leg.last_received = now
            if leg.remote is None or leg.remote[0] != source[0]:
                leg.remote = source[:2]         # behind NAT: answer where its packets come from
            if other.side in self.notice or other.remote is None:
                continue
            try:
                other.rtp.sendto(data, other.remote)
            except OSError:
                pass
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
            if leg.remote_rtcp is None or leg.remote_rtcp[0] != source[0]:
                leg.remote_rtcp = source[:2]
            if other.remote_rtcp is not None:
                try:
                    other.rtcp.sendto(data, other.remote_rtcp)
                except OSError:
                    pass

    def play(self, toward: str, codes: bytes, pcm: bytes, payload_type: int, on_sent, on_done) -> None:
        """Play a notice toward one side instead of what the other side sends, until it ends."""
        def done(t: float) -> None:
            self.notice.pop(toward, None)
            on_done(t)
        player = NoticePlayer(self.loop, self.legs[toward], codes, pcm, payload_type, on_sent, done)
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
