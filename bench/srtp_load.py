"""The SRTP load generator of `bench/sip --srtp`: N concurrent calls between two user agents it
plays itself over UDP, through a SIP relay or straight to each other, each side sending 20 ms
G.711 packets in real time, in SRTP with SDES keys (RFC 4568, through pylibsrtp) or in plain RTP,
so that both are measured by the same code.

The SIP is the least a call needs: the caller (the operator's side) sends INVITE with an SDP offer
(an `a=crypto` line with its key when SRTP), the callee (the PBX's side) answers 200 at once with
its own, the caller ACKs; after `seconds` both sides fall silent and the caller sends BYE. Each side decrypts what it gets with the
key of the SDP it received (the relay's, through a relay); SRTP that comes before that SDP was read
(the callee starts sending as it answers) is counted apart, neither measured nor lost.

Both agents run in one thread of one process, so no lock or GIL hand-over delays a time stamp.
Every payload carries the wall-clock time it was sent, and the kernel stamps each packet as it
arrives (SO_TIMESTAMPNS): the delay measured is the path's (the relay's), not this loop's.
"""

import base64
import heapq
import os
import re
import selectors
import socket
import statistics
import struct
import time
from dataclasses import dataclass, field

from pylibsrtp import Error, Policy, Session

PACKET_S = 0.02
SAMPLES = 160                   # 20 ms at 8000 Hz
PCMA = 8
DRAIN_S = 0.2                   # between the last packets of a call and its BYE
SUITE = "AES_CM_128_HMAC_SHA1_80"
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)     # Linux; Python does not name it
TIMESPEC = struct.Struct("@ll")
SILENCE = bytes([0xD5]) * SAMPLES                             # A-law silence
CRYPTO = re.compile(rb"a=crypto:\d+ " + SUITE.encode() + rb" inline:([A-Za-z0-9+/=]+)")


@dataclass
class Stream:
    """One side's media in one call: what it sends, and what it received from the other side."""

    sock: socket.socket
    ssrc: int
    remote: tuple[str, int] | None = None
    key: bytes = b""                        # its own SRTP master key + salt (sent in its SDP)
    protect: Session | None = None
    unprotect: Session | None = None
    sent: int = 0
    sending: bool = False
    transits: list[float] = field(default_factory=list)    # arrival - send time, seconds
    jitter: float = 0.0                     # RFC 3550's running estimate, seconds
    rejected: int = 0                       # failed SRTP authentication
    early: int = 0                          # SRTP that came before the SDP with its key was read

    @property
    def port(self) -> int:
        """Its local RTP port."""
        return self.sock.getsockname()[1]

    def sdp(self, host: str, srtp: bool, session_id: int) -> bytes:
        """Its SDP: the offer or the answer."""
        lines = ["v=0", f"o=- {session_id} 1 IN IP4 {host}", "s=-", f"c=IN IP4 {host}", "t=0 0",
                 f"m=audio {self.port} {'RTP/SAVP' if srtp else 'RTP/AVP'} {PCMA}", f"a=rtpmap:{PCMA} PCMA/8000",
                 "a=ptime:20", "a=sendrecv"]
        if srtp:
            lines.append(f"a=crypto:1 {SUITE} inline:{base64.b64encode(self.key).decode()}")
        return ("\r\n".join(lines) + "\r\n").encode()

    def described(self, body: bytes) -> None:
        """The other end's SDP: where to send, and the key to decrypt what it sends."""
        port = re.search(rb"m=audio (\d+) ", body)
        host = re.search(rb"c=IN IP[46] (\S+)", body)
        self.remote = (host.group(1).decode(), int(port.group(1)))
        crypto = CRYPTO.search(body)
        if self.protect is not None:
            if crypto is None:
                raise RuntimeError(f"an SRTP offer was answered without a key: {body!r}")
            key = base64.b64decode(crypto.group(1))
            self.unprotect = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND,
                                            srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80))

    def send(self) -> None:
        """The next packet, its send time in its payload."""
        header = struct.pack("!BBHII", 0x80, PCMA | (0x80 if self.sent == 0 else 0), self.sent & 0xFFFF,
                             (self.sent * SAMPLES) & 0xFFFFFFFF, self.ssrc)
        packet = header + struct.pack("!d", time.time()) + SILENCE[8:]
        if self.protect is not None:
            packet = self.protect.protect(packet)
        self.sock.sendto(packet, self.remote)
        self.sent += 1

    def receive(self) -> None:
        """Every packet waiting: its transit from the kernel's arrival stamp."""
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(2048, socket.CMSG_SPACE(TIMESPEC.size))
            except BlockingIOError:
                return
            arrival = time.time()
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanoseconds = TIMESPEC.unpack(value[:TIMESPEC.size])
                    arrival = seconds + nanoseconds / 1e9
            if self.protect is not None and self.unprotect is None:
                self.early += 1
                continue
            if self.unprotect is not None:
                try:
                    data = self.unprotect.unprotect(data)
                except Error:
                    self.rejected += 1
                    continue
            if len(data) < 20 or data[1] & 0x7F != PCMA:
                continue
            transit = arrival - struct.unpack_from("!d", data, 12)[0]
            if self.transits:
                self.jitter += (abs(transit - self.transits[-1]) - self.jitter) / 16
            self.transits.append(transit)


@dataclass
class Call:
    """One call's dialog and its two streams."""

    index: int
    caller: Stream
    callee: Stream
    call_id: str
    to_tag: str = ""
    contact: str = ""                       # where the caller's in-dialog requests go
    answered: bool = False
    done: bool = False
    ends_at: float = float("inf")          # when its sides stop sending
    bye_at: float = float("inf")


def headers(message: bytes) -> tuple[str, dict[str, list[str]], bytes]:
    """The start line, the headers (by lower-case name) and the body of a SIP message."""
    head, _, body = message.partition(b"\r\n\r\n")
    first, *lines = head.decode().split("\r\n")
    found: dict[str, list[str]] = {}
    compact = {"v": "via", "f": "from", "t": "to", "i": "call-id", "m": "contact"}
    for line in lines:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        found.setdefault(compact.get(name, name), []).append(value.strip())
    return first, found, body


def address_of(uri_header: str) -> tuple[str, int]:
    """host and port of the SIP URI in a Contact."""
    match = re.search(r"sips?:(?:[^@>;]*@)?(\[[^\]]+\]|[^:;>]+)(?::(\d+))?", uri_header)
    return match.group(1).strip("[]"), int(match.group(2) or 5060)


class LoadGenerator:
    """`calls` calls of `seconds` from its caller to its callee, through the relay `run` is given
    or straight, in SRTP when `srtp`."""

    def __init__(self, calls: int, seconds: float, srtp: bool, host: str = "127.0.0.1"):
        self.seconds, self.srtp, self.host = seconds, srtp, host
        self.selector = selectors.DefaultSelector()
        self.caller_sip = self._socket(self._sip, "caller")
        self.callee_sip = self._socket(self._sip, "callee")
        self.calls = [Call(index, self._stream(), self._stream(), f"bench-{index}-{os.getpid()}@{host}")
                      for index in range(calls)]
        self.by_id = {call.call_id: call for call in self.calls}
        self.schedule: list[tuple[float, int, Stream]] = []
        self.target: tuple[str, int] | None = None

    @property
    def caller_port(self) -> int:
        """The caller's SIP port (the relay's operator-side peer)."""
        return self.caller_sip.getsockname()[1]

    @property
    def callee_port(self) -> int:
        """The callee's SIP port (the relay's PBX-side peer)."""
        return self.callee_sip.getsockname()[1]

    def _socket(self, handler, data) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((self.host, 0))
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, (handler, data))
        return sock

    def _stream(self) -> Stream:
        stream = Stream(None, int.from_bytes(os.urandom(4), "big"))
        stream.sock = self._socket(lambda s: s.receive(), stream)
        stream.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if self.srtp:
            stream.key = os.urandom(30)
            stream.protect = Session(Policy(key=stream.key, ssrc_type=Policy.SSRC_ANY_OUTBOUND,
                                            srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
        return stream

    def run(self, target: tuple[str, int] | None = None, mark=lambda what: None, timeout: float = 60.0) -> None:
        """Place every call at once toward `target` (the relay's operator side; None: the callee)
        and run them to their end. `mark("steady")` is called once every call has had its answer
        for a second, `mark("ending")` just before the first BYE."""
        self.target = target or (self.host, self.callee_port)
        for call in self.calls:
            self._invite(call)
        deadline = time.monotonic() + self.seconds + timeout
        steady_at, marked = None, set()
        while not all(call.done for call in self.calls):
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"{sum(not c.done for c in self.calls)} of {len(self.calls)} calls did not end")
            wait = min(0.1, max(0.0, self.schedule[0][0] - now)) if self.schedule else 0.1
            for key, _ in self.selector.select(wait):
                handler, data = key.data
                handler(data)
            now = time.monotonic()
            while self.schedule and self.schedule[0][0] <= now:
                due, order, stream = heapq.heappop(self.schedule)
                if stream.sending:
                    stream.send()
                    heapq.heappush(self.schedule, (due + PACKET_S, order, stream))
            if steady_at is None and all(call.answered for call in self.calls):
                steady_at = now + 1.0
            if steady_at is not None and now >= steady_at and "steady" not in marked:
                marked.add("steady")
                mark("steady")
            for call in self.calls:
                if now >= call.ends_at:
                    if "ending" not in marked:
                        marked.add("ending")
                        mark("ending")
                    # Both sides fall silent first: what is on its way when the BYE ends the
                    # relay's media would count as lost.
                    call.caller.sending = call.callee.sending = False
                    call.ends_at, call.bye_at = float("inf"), now + DRAIN_S
                elif now >= call.bye_at:
                    call.bye_at = float("inf")
                    self._request(call, "BYE", 2)

    def _start(self, stream: Stream, index: int) -> None:
        """Send from now, spread over the 20 ms so that the calls do not all send at once."""
        stream.sending = True
        heapq.heappush(self.schedule, (time.monotonic() + (index % 20) * PACKET_S / 20, id(stream), stream))

    # -- SIP ---------------------------------------------------------------------------------------

    def _invite(self, call: Call) -> None:
        body = call.caller.sdp(self.host, self.srtp, call.index)
        self._request(call, "INVITE", 1, body)

    def _request(self, call: Call, method: str, cseq: int, body: bytes = b"") -> None:
        target = self.target if method == "INVITE" else address_of(call.contact)
        uri = f"sip:shop@{self.target[0]}:{self.target[1]}" if method == "INVITE" else call.contact.strip("<>")
        lines = [f"{method} {uri} SIP/2.0",
                 f"Via: SIP/2.0/UDP {self.host}:{self.caller_port};branch=z9hG4bK{method}{call.index}x{cseq};rport",
                 "Max-Forwards: 70", f"From: <sip:3225550000@{self.host}>;tag=c{call.index}",
                 f"To: <sip:shop@{self.target[0]}>" + (f";tag={call.to_tag}" if call.to_tag else ""),
                 f"Call-ID: {call.call_id}", f"CSeq: {cseq} {method}",
                 f"Contact: <sip:3225550000@{self.host}:{self.caller_port}>"]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        self.caller_sip.sendto(("\r\n".join(lines) + "\r\n\r\n").encode() + body, target)

    def _sip(self, side: str) -> None:
        sock = self.caller_sip if side == "caller" else self.callee_sip
        while True:
            try:
                data, source = sock.recvfrom(65536)
            except BlockingIOError:
                return
            first, found, body = headers(data)
            call = self.by_id.get(found.get("call-id", [""])[0])
            if call is None:
                continue
            if side == "caller":
                self._caller_got(call, first, found, body)
            else:
                self._callee_got(call, first, found, body, source)

    def _caller_got(self, call: Call, first: str, found: dict, body: bytes) -> None:
        if not first.startswith("SIP/2.0"):
            return                                      # no request comes to the caller but its dialog's
        status, method = int(first.split()[1]), found["cseq"][0].split()[1]
        if status < 200:
            return
        if method == "BYE":
            call.done = True
            return
        if status >= 300:
            raise RuntimeError(f"call {call.index} was refused: {first}")
        if call.answered:
            self._request(call, "ACK", 1)               # a retransmitted 200
            return
        call.to_tag = re.search(r";tag=([^;>\s]+)", found["to"][0]).group(1)
        call.contact = found["contact"][0]
        call.caller.described(body)
        call.answered = True
        call.ends_at = time.monotonic() + self.seconds
        self._request(call, "ACK", 1)
        self._start(call.caller, call.index)

    def _callee_got(self, call: Call, first: str, found: dict, body: bytes, source: tuple[str, int]) -> None:
        method = first.split()[0]
        if method == "ACK":
            return
        answer = b""
        if method == "INVITE":
            call.callee.described(body)
            answer = call.callee.sdp(self.host, self.srtp, call.index)
        lines = ["SIP/2.0 200 OK", *(f"Via: {via}" for via in found["via"]), f"From: {found['from'][0]}",
                 f"To: {found['to'][0]}" + ("" if ";tag=" in found["to"][0] else f";tag=s{call.index}"),
                 f"Call-ID: {call.call_id}", f"CSeq: {found['cseq'][0]}",
                 f"Contact: <sip:shop@{self.host}:{self.callee_port}>"]
        if answer:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(answer)}")
        self.callee_sip.sendto(("\r\n".join(lines) + "\r\n\r\n").encode() + answer, source)
        if method == "INVITE" and not call.callee.sending:
            self._start(call.callee, call.index)

    def close(self) -> None:
        """Close every socket."""
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()

    # -- what arrived ------------------------------------------------------------------------------

    def results(self) -> dict:
        """Loss, delay and its variation over every stream (each way of each call)."""
        pairs = [(call.caller, call.callee) for call in self.calls] + [(call.callee, call.caller) for call in self.calls]
        variation, delays, jitters = [], [], []
        lost = rejected = early = 0
        for sender, receiver in pairs:
            lost += max(0, sender.sent - len(receiver.transits) - receiver.early)
            rejected += receiver.rejected
            early += receiver.early
            if receiver.transits:
                floor = min(receiver.transits)
                variation += [t - floor for t in receiver.transits]
                delays += receiver.transits
                jitters.append(receiver.jitter)
        variation.sort()
        return {"packets": sum(sender.sent for sender, _ in pairs), "lost": lost, "rejected": rejected, "early": early,
                "delay_ms": 1000 * statistics.median(delays) if delays else 0.0,
                "variation_median_ms": 1000 * statistics.median(variation) if variation else 0.0,
                "variation_p99_ms": 1000 * variation[int(0.99 * (len(variation) - 1))] if variation else 0.0,
                "jitter_ms": 1000 * statistics.mean(jitters) if jitters else 0.0}
