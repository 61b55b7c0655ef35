"""Each side's peer asked "are you there?" with an OPTIONS request at an interval (RFC 3261 11.1).

The request keeps the NAT router's binding for the appliance's SIP port open, as RFC 5626's
keep-alives do, and its answer says whether the peer is there: any final answer counts (a 403 or
405 too: something answers at that address). Two pings in a row without one make the peer "not
answering" (a warning, an alarm, the fault LED) until it answers again. `ping()` asks once,
blocking, for `callrec doctor`.
"""

import logging
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.config import join_host_port
from appliance.sip.message import BRANCH, MAX_MESSAGE_BYTES, Message, SipError, Via, parse

log = logging.getLogger(__name__)

PING_WAIT_S = 8.0           # a ping without a final answer by then is a miss
MISSES_DOWN = 2             # misses in a row that make a peer "not answering"
PEER_NAMES = {"trunk": "the operator's server", "pbx": "the PBX"}


def options_request(peer: tuple[str, int | None], via: Via, call_id: str, cseq: int) -> Message:
    """An OPTIONS request to `peer` (host, port or None) from the appliance (sent-by and branch in `via`)."""
    target = join_host_port(*peer)
    message = Message(method="OPTIONS", uri=f"sip:{target}")
    sent_by = join_host_port(via.host, None)
    for name, value in (("via", str(via)), ("max-forwards", "70"),
                        ("from", f"<sip:callrec@{sent_by}>;tag={call_id[:10]}"), ("to", f"<sip:{target}>"),
                        ("call-id", call_id), ("cseq", f"{cseq} OPTIONS"), ("accept", "application/sdp")):
        message.headers.append([name, value])
    return message


@dataclass
class PeerHealth:
    """What is known of one side's peer."""

    side: str
    peer: tuple[str, int | None]
    answering: bool | None = None           # None until its first ping is over
    since: float = 0.0                      # wall clock of the last change
    misses: int = 0
    status: int | None = None               # its last final answer

    def problem(self, trunk: str) -> str | None:
        """Why this peer is a problem now, or None."""
        if self.answering is not False:
            return None
        return (f"sip trunk {trunk}: {PEER_NAMES[self.side]} {join_host_port(*self.peer)} has not answered since "
                f"{time.strftime('%H:%M:%S', time.localtime(self.since))}: calls through it fail; check "
                f"the network, the address and the NAT router's port forwarding")


class PeerWatch:
    """Pings each side's peer every `interval` on the relay's loop.

    `via(side, branch)` is the appliance's Via toward a side; `sender(side, message)` what sends
    one of the appliance's requests to that side's peer (it raises SipError when it cannot, e.g. a
    name that does not resolve); `start_transaction` is the relay's `ClientTransactions.start`."""

    def __init__(self, loop, trunk: str, peers: dict[str, tuple[str, int | None]], intervals: dict[str, float],
                 via: Callable[[str, str], Via], sender: Callable[[str, Message], Callable[[], None]],
                 start_transaction, missed: Callable[[str], None] = lambda side: None):
        self.loop, self.trunk = loop, trunk
        self.health = {side: PeerHealth(side, peer) for side, peer in peers.items() if intervals.get(side)}
        self.intervals = intervals
        self._via, self._sender, self._start_transaction = via, sender, start_transaction
        self._missed = missed               # told each miss: an SRV set's next target may answer
        self._timers: dict[str, object] = {}
        self._cseq = 0

    def start(self) -> None:
        """Ping every watched peer now, then at its side's interval."""
        for side in self.health:
            self._ping(side)

    def close(self) -> None:
        """Stop pinging."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def problems(self) -> list[str]:
        """The peers not answering now."""
        return [problem for health in self.health.values() if (problem := health.problem(self.trunk))]

    def _ping(self, side: str) -> None:
        interval = self.intervals[side]
        self._timers[side] = self.loop.call_later(interval, self._ping, side)
        self._cseq += 1
        branch = f"{BRANCH}{random.getrandbits(64):016x}"
        via = self._via(side, branch)
        request = options_request(self.health[side].peer, via, f"{random.getrandbits(64):016x}@callrec", self._cseq)
        try:
            send = self._sender(side, request)
        except SipError as exc:
            log.debug("sip trunk %s: no ping to the %s side: %s", self.trunk, side, exc)
            self._answered(side, None)
            return
        self._start_transaction(branch, send, via.transport == "TCP", f"the OPTIONS to the {side} side",
                                on_final=lambda status: self._answered(side, status),
                                wait_s=min(PING_WAIT_S, interval))

    def _answered(self, side: str, status: int | None) -> None:
        health = self.health[side]
        if status is not None:
            health.misses, health.status = 0, status
            if health.answering is not True:
                if health.answering is False:
                    log.warning("sip trunk %s: %s %s answers again (%s)", self.trunk, PEER_NAMES[side],
                                join_host_port(*health.peer), status)
                health.answering, health.since = True, time.time()
            return
        health.misses += 1
        self._missed(side)
        if health.misses >= MISSES_DOWN and health.answering is not False:
            health.answering, health.since = False, time.time()
            log.warning("%s", health.problem(self.trunk))


def ping(peer: tuple[str, int], local_host: str, transport: str = "udp", wait_s: float = 4.0,
         tls: ssl.SSLContext | None = None, hostname: str | None = None) -> tuple[int | None, str]:
    """Ask `peer` once, from an ephemeral port on `local_host` (over TLS with `tls`, checking that
    the certificate names `hostname`): (its final status, or None, and what happened in words)."""
    host, port = peer
    try:
        address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM)[0]
    except OSError as exc:
        return None, f"{host} does not resolve: {exc.strerror or exc}"
    family, kind, _, _, target = address
    where = f"{host}:{port} over {transport.upper()}"
    with socket.socket(family, kind) as sock:
        sock.settimeout(wait_s)
        try:
            sock.bind((local_host, 0))
            sock.connect(target)
        except OSError as exc:
            return None, f"cannot reach {where}: {exc.strerror or exc}"
        here = sock.getsockname()
        if transport == "tls":
            try:
                sock = tls.wrap_socket(sock, server_hostname=hostname or host)
            except ssl.SSLError as exc:
                return None, f"TLS with {where} failed: {getattr(exc, 'verify_message', None) or exc}"
            except OSError as exc:
                return None, f"TLS with {where} failed: {exc.strerror or exc}"
        branch = f"{BRANCH}{random.getrandbits(64):016x}"
        via = Via(transport.upper(), here[0], here[1], {"branch": branch, "rport": None})
        data = options_request(peer, via, f"{random.getrandbits(64):016x}@callrec", 1).to_bytes()
        deadline = time.monotonic() + wait_s
        try:
            while True:
                sock.send(data)
                sock.settimeout(min(0.5, max(0.01, deadline - time.monotonic())) if transport == "udp"
                                else max(0.01, deadline - time.monotonic()))
                try:
                    answer = parse(sock.recv(MAX_MESSAGE_BYTES))
                except socket.timeout:
                    if time.monotonic() >= deadline:
                        return None, f"no answer from {where} in {wait_s:g} s: check the address, the firewall " \
                                     "and the NAT router's port forwarding"
                    continue
                if answer.status is not None and answer.status >= 200:
                    return answer.status, f"{where} answered {answer.status} {answer.reason}"
        except ConnectionRefusedError:
            return None, f"nothing listens at {where} (connection refused)"
        except (OSError, SipError) as exc:
            return None, f"{where}: {exc}"
