"""The relay between the operator's trunk and the shop's PBX: what goes where, and what it means
for the call being recorded.

The appliance is the next hop of both sides, like a small session border controller: requests from
one side go to the other side's peer (or, in a dialog, to the other side's contact); it adds its own
Via and takes it off the responses, so transactions stay end to end and retransmissions are the
endpoints' business (a stateless proxy in RFC 3261's terms). It rewrites each Contact to itself, so
the dialog's later requests come through it, drops Record-Route and Route (the route set of each
side ends at the appliance), and rewrites each SDP to the media anchor.

From the messages it follows each INVITE dialog: the 2xx starts the recording and the notice; a
final error before the answer (busy, CANCEL's 487, a failure) makes a `missed` row; BYE from either
side ends it; RTP that stops for `rtp_timeout_s` (not while on hold) or a session timer (RFC 4028)
that expires without a refresh ends it too, with a BYE from the appliance to both sides. Those BYEs
are the appliance's own requests: it sends them again over UDP until they are answered, as an RFC
3261 client transaction (`client.py`).
"""

import asyncio
import functools
import hashlib
import logging
import random
import socket
import time
from dataclasses import dataclass, field

from appliance.config import SipSideConfig, SipTrunkConfig, is_ip_address, split_host_port
from appliance.sip import codecs
from appliance.sip.client import ClientTransactions
from appliance.sip.keepalive import PeerWatch
from appliance.sip.locate import Locator, Target, locate_all
from appliance.sip.line import CallFacts, CallRecording, SipLine
from appliance.sip.media import Leg, MediaSession, NoPortsError, PortPool
from appliance.sip.message import BRANCH, Message, NameAddr, SipError, Uri, Via, parse, response
from appliance.sip.sdp import anchor
from appliance.sip.stun import PublicAddress
from appliance.sip.transport import SideTransport, tls_settings

log = logging.getLogger(__name__)

TRUNK, PBX = "trunk", "pbx"
TIMER_C_S = 180.0           # an INVITE with no final answer by then is given up (RFC 3261 16.8)
LINGER_S = 32.0             # a finished dialog is kept this long for retransmissions (64*T1)
SUBSCRIPTION_S = 3600.0
TICK_S = 0.5


def other(side: str) -> str:
    """The side across the appliance."""
    return PBX if side == TRUNK else TRUNK


@dataclass
class Side:
    """One side's settings: the appliance's address there (where it listens, and the one it names
    in Via, Contact and SDP: the NAT router's when there is one), its peer, its transport."""

    name: str
    host: str
    port: int
    peer: tuple[str, int | None] | None     # as configured: a name, or an address; its port if given
    transport: str
    public_host: str
    public_port: int
    tls_port: int                           # SIP over TLS (when the side has a certificate)

    @classmethod
    def of(cls, name: str, config: SipSideConfig) -> "Side":
        """From the configuration."""
        host, port = split_host_port(config.listen)
        public_host, public_port = host, port
        if config.external is not None:
            public_host, external_port = split_host_port(config.external)
            public_port = external_port or port
        return cls(name, host, port, split_host_port(config.peer) if config.peer else None, config.transport.upper(),
                   public_host, public_port, config.tls_port or port + 1)

    def our_port(self, transport: str) -> int:
        """The port the appliance names on this side for `transport`."""
        return self.tls_port if transport == "TLS" else self.public_port

    @property
    def family(self) -> int:
        """The address family of the appliance's address on this side (and so of its peer's)."""
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def is_us(self, host: str, port: int | None) -> bool:
        """Whether `host`:`port` names the appliance on this side."""
        return host in (self.host, self.public_host) and (port or 5060) in (self.port, self.public_port, self.tls_port)


@dataclass
class Binding:
    """A phone registered through the appliance: where calls for its user go."""

    uri: Uri
    address: tuple[str, int]
    transport: str
    until: float


@dataclass
class Dialog:
    """A dialog relayed through the appliance; an INVITE dialog has media and maybe a recording."""

    call_id: str
    caller: str                             # the side that sent the dialog's first request
    started: float
    expires: float                          # when to give up on it or forget it
    invite_cseq: int = 0
    invite_uri: str = ""
    invite_target: tuple = ()               # (address, transport) of the first request
    contacts: dict = field(default_factory=dict)
    cseq: dict = field(default_factory=dict)
    from_header: str = ""                   # the caller's From, with its tag
    to_header: str = ""                     # the callee's To, with its tag (from the 2xx)
    state: str = "calling"                  # calling | challenged | confirmed | failed | ended
    direction: str = "incoming"
    number: str | None = None
    media: MediaSession | None = None
    recording: CallRecording | None = None
    answered: float | None = None
    on_hold: bool = False
    session_deadline: float | None = None

    def role(self, side: str) -> str:
        """`caller` or `callee`."""
        return "caller" if side == self.caller else "callee"


def caller_number(message: Message, direction: str) -> str | None:
    """Who is on the other end: for an incoming call the P-Asserted-Identity (else From) user; for
    an outgoing one the number dialled (the Request-URI's user, else the To's)."""
    if direction == "incoming":
        candidates = [*message.get_all("p-asserted-identity"), message.get("from")]
    else:
        candidates = [f"<{message.uri}>", message.get("to")]
    for value in candidates:
        try:
            user = NameAddr.parse(value or "").uri.user
        except SipError:
            continue
        if user and user.lower() not in ("anonymous", "unknown", "restricted"):
            return user.split(";")[0]
    return None


class Proxy:
    """Relays one trunk's SIP and follows its calls (everything on the loop's thread)."""

    def __init__(self, loop, config: SipTrunkConfig, line: SipLine):
        self.loop = loop
        self.config = config
        self.line = line
        self.sides = {TRUNK: Side.of(TRUNK, config.trunk), PBX: Side.of(PBX, config.pbx)}
        self.ports = PortPool(config.rtp_port_min, config.rtp_port_max)
        self.dialogs: dict[str, Dialog] = {}
        self.bindings: dict[str, Binding] = {}
        self._resolved: dict[str, str] = {}
        self.client = ClientTransactions(loop, config.name)
        self.transports = {}
        for name, side in self.sides.items():
            self.transports[name] = SideTransport(loop, side.host, side.port, functools.partial(self.receive, name),
                                                  tls_settings(getattr(config, name), side.tls_port),
                                                  functools.partial(self.undelivered, name))
        self._ticker = None
        servers = [split_host_port(server) for server in config.dns_servers]
        self.locators = {name: Locator(*side.peer, getattr(config, name).transport.upper()
                                       if getattr(config, name).transport_chosen else None, side.family, servers)
                         for name, side in self.sides.items() if side.peer is not None}
        self._lookups: set[asyncio.Task] = set()
        self.public = {name: PublicAddress(split_host_port(getattr(config, name).stun_server), side.host, config.name)
                       for name, side in self.sides.items() if getattr(config, name).stun_server}
        self.peers = PeerWatch(loop, config.name, {name: side.peer for name, side in self.sides.items() if side.peer},
                               {TRUNK: config.trunk.keepalive_s, PBX: config.pbx.keepalive_s},
                               self._own_via, self._sender, self.client.start,
                               lambda side: self.locators[side].failed())

    def start(self) -> None:
        """Look the peers and the public addresses up (while the loop is not running yet: before
        relaying starts), start listening, the timers and the peers' pings (on the loop's thread)."""
        self.loop.run_until_complete(asyncio.gather(locate_all(list(self.locators.values())),
                                                    *(public.refresh() for public in self.public.values())))
        for side in self.public:
            self._public_found(side)
        for transport in self.transports.values():
            transport.start()
        self._tick()
        self.peers.start()

    @property
    def busy(self) -> bool:
        """True while a call is ringing or in progress."""
        return any(d.state in ("calling", "confirmed") and d.media is not None for d in list(self.dialogs.values()))

    def close(self) -> None:
        """End the calls in progress as interrupted and close every socket."""
        if self._ticker is not None:
            self._ticker.cancel()
        self.peers.close()
        now = time.monotonic()
        for dialog in list(self.dialogs.values()):
            if dialog.state == "confirmed":
                self._end(dialog, now, "recorder stopped", interrupted=True)
            if dialog.media is not None:
                dialog.media.close()
        self.dialogs.clear()
        self.client.close()
        for transport in self.transports.values():
            transport.close()

    # -- what arrives ------------------------------------------------------------------------------

    def receive(self, side: str, data: bytes, source: tuple[str, int], transport: str) -> None:
        """One message from `side`: relay it, answer it with an error, or drop it."""
        try:
            message = parse(data)
        except SipError as exc:
            self._refuse(side, exc, source, transport)
            return
        try:
            if message.is_request:
                self._request(side, message, source, transport)
            else:
                self._response(side, message)
        except SipError as exc:
            self._refuse(side, exc, source, transport, message)
        except Exception:
            # One message must never stop the relay; a request still gets an answer.
            log.exception("sip trunk %s: error relaying a message from the %s side", self.config.name, side)
            if message.is_request:
                self._refuse(side, SipError("internal error", 500), source, transport, message)

    def _refuse(self, side: str, exc: SipError, source, transport: str, message: Message | None = None) -> None:
        message = message or exc.message
        if exc.status is None or message is None or not message.is_request or message.method == "ACK":
            log.warning("sip trunk %s: dropped a message from %s:%s: %s", self.config.name, *source, exc)
            return
        log.warning("sip trunk %s: answered %s to %s from %s:%s: %s", self.config.name, exc.status,
                    message.method, *source, exc)
        reply = response(message, exc.status, to_tag=hashlib.sha1(message.call_id.encode()).hexdigest()[:10])
        reply.set("warning", f'399 callrec "{str(exc)[:100]}"')
        self.transports[side].send(reply.to_bytes(), source, transport)

    def undelivered(self, side: str, messages: list[bytes], reason: str) -> None:
        """Messages a connection to `side` failed to carry: each request relayed there that
        waits for an answer gets 503 at once, as if from that side (its sender need not wait for
        its own timeout); the appliance's own requests are left to their transactions."""
        for data in messages:
            try:
                message = parse(data)
            except SipError:
                continue
            if not message.is_request or message.method == "ACK" or len(message.get_all("via")) < 2:
                continue
            log.warning("sip trunk %s: answered 503 to %s %s: %s", self.config.name, message.method,
                        message.call_id, reason)
            reply = response(message, 503, to_tag=hashlib.sha1(message.call_id.encode()).hexdigest()[:10])
            text = reason[:150].replace('"', "'")
            reply.set("warning", f'399 callrec "{text}"')
            self._response(side, reply)
            dialog = self.dialogs.get(message.call_id)
            if dialog is not None and message.method == "INVITE" and dialog.state == "failed":
                dialog.invite_target = ()       # its ACK ends here: the 503 was the appliance's

    def _request(self, side: str, message: Message, source, transport: str) -> None:
        out = other(side)
        via = Via.parse(message.pop_first("via"))
        via.params.update(received=source[0], rport=str(source[1]))
        message.prepend("via", str(via))
        if self._ours(message.get("via")):
            # Sent by the appliance to itself (a peer set to its own address). A call that goes
            # out to the operator and comes back in (to the shop's other number) is no loop.
            raise SipError("the request came back to the appliance", 482)
        forwards = int(message.get("max-forwards") or 70)
        if forwards <= 0:
            raise SipError("Max-Forwards reached 0", 483)
        message.set("max-forwards", str(forwards - 1))
        number, method = message.cseq
        to_tag = NameAddr.parse(message.get("to")).tag
        dialog = self.dialogs.get(message.call_id)
        new = False
        if method == "CANCEL":
            if dialog is None or dialog.caller != side or not dialog.invite_target:
                raise SipError("no INVITE to cancel", 481)
            uri, (address, out_transport) = dialog.invite_uri, dialog.invite_target
        elif to_tag is None and method != "ACK":
            uri, address, out_transport = self._first_hop(side, message)
            if method in ("INVITE", "SUBSCRIBE"):
                if dialog is None:
                    dialog, new = self._new_dialog(side, message, number), True
                elif dialog.state in ("challenged", "failed") and number > dialog.invite_cseq:
                    dialog.state, dialog.invite_cseq = "calling", number   # a retry with credentials
                    dialog.expires = time.monotonic() + TIMER_C_S
                dialog.invite_uri, dialog.invite_target = uri, (address, out_transport)
            elif method == "REGISTER":
                self._register(message)
        else:
            if dialog is None:
                if method == "ACK":
                    return                  # for a dialog long gone: nothing to acknowledge
                raise SipError("no such dialog", 481)
            if method == "ACK" and dialog.state in ("failed", "challenged"):
                if not dialog.invite_target:
                    return                  # it acknowledges the appliance's own 503
                uri, (address, out_transport) = dialog.invite_uri, dialog.invite_target
            else:
                contact = dialog.contacts.get(out)
                if contact is None:
                    raise SipError("the dialog has no target on the other side yet", 481)
                uri, (address, out_transport) = str(contact), self._contact_target(contact, out)
            if method != "ACK":
                dialog.cseq[side] = max(dialog.cseq.get(side, 0), number)
            if dialog.media is None:
                dialog.expires = time.monotonic() + SUBSCRIPTION_S
        message.uri = uri
        try:
            self._rewrite(side, message, dialog, out_transport)
        except SipError:
            if new:
                self._forget(dialog)
            raise
        if method == "BYE" and dialog is not None:
            self._end(dialog, time.monotonic(), f"hung up by the {dialog.role(side)}")
        message.prepend("via", str(self._via(out, out_transport, message)))
        self.transports[out].send(message.to_bytes(), address, out_transport)

    def _response(self, side: str, message: Message) -> None:
        if not self._ours(message.get("via")):
            log.warning("sip trunk %s: dropped a response not meant for the appliance", self.config.name)
            return
        ours = Via.parse(message.pop_first("via"))
        if not message.get("via"):          # the answer to a request the appliance sent itself
            self.client.answered(ours.branch, message.status)
            return
        out = other(side)
        next_hop = Via.parse(message.get("via"))
        dialog = self.dialogs.get(message.call_id)
        number, method = message.cseq
        if dialog is not None:
            self._rewrite(side, message, dialog, next_hop.transport)
            if method in ("INVITE", "SUBSCRIBE"):
                self._invite_answered(dialog, side, message, number)
            elif method == "UPDATE" and 200 <= message.status < 300:
                self._session_timer(dialog, message)
        elif method == "REGISTER":
            self._registered(message)
        else:
            self._rewrite(side, message, None, next_hop.transport)
        self.transports[out].send(message.to_bytes(), next_hop.reply_address(), next_hop.transport)

    # -- rewriting ---------------------------------------------------------------------------------

    def _rewrite(self, side: str, message: Message, dialog: Dialog | None, out_transport: str) -> None:
        """Contacts to the appliance, route sets cut, SDP to the media anchor."""
        out = other(side)
        message.remove("record-route")
        message.remove("route")
        redirect = message.status is not None and 300 <= message.status < 400
        contacts = message.get_all("contact")
        if contacts and contacts[0].strip() != "*" and not redirect:
            rewritten = []
            for value in contacts:
                contact = NameAddr.parse(value)
                if dialog is not None and not rewritten and (message.is_request or message.status < 300):
                    dialog.contacts[side] = contact.uri
                contact.uri = self._our_uri(out, contact.uri.user, out_transport)
                rewritten.append(str(contact))
            message.replace_all("contact", rewritten)
        kind = (message.get("content-type") or "").split(";")[0].strip().lower()
        if message.body and kind == "application/sdp" and dialog is not None and dialog.media is not None \
                and not dialog.media.closed:
            legs = dialog.media.legs
            message.body, media, sent = anchor(message.body, self.sides[out].public_host, legs[out].local[1],
                                               legs[out].keys, legs[out].media)
            legs[side].described(media)
            legs[out].sent(sent)
            on_hold = any(leg.media is not None and leg.media.on_hold for leg in legs.values())
            if dialog.on_hold and not on_hold:
                now = time.monotonic()
                for leg in legs.values():
                    leg.last_received = now     # the timeout counts again from the resume
            dialog.on_hold = on_hold

    def _our_uri(self, side: str, user: str | None, transport: str) -> Uri:
        here = self.sides[side]
        params = {"transport": transport.lower()} if transport in ("TCP", "TLS") else {}
        return Uri("sip", user, here.public_host, here.our_port(transport), params)

    def _own_via(self, side: str, branch: str, transport: str | None = None) -> Via:
        """The appliance's Via on a side's requests (by default over the transport its peer takes)."""
        here = self.sides[side]
        locator = self.locators.get(side)
        transport = transport or (locator.target.transport if locator and locator.target else here.transport)
        return Via(transport, here.public_host, here.our_port(transport), {"branch": branch, "rport": None})

    def _peer_target(self, side: str) -> Target:
        """Where a side's peer is now; SipError (503) while its name does not resolve."""
        locator = self.locators[side]
        if locator.target is None:
            raise SipError(locator.error or f"{locator.host} is being looked up", 503)
        self.transports[side].names[locator.target.address] = locator.host     # for its TLS certificate
        return locator.target

    def _sender(self, side: str, message: Message):
        """What sends one of the appliance's own requests to a side's peer (again, when retransmitted)."""
        target = self._peer_target(side)
        return functools.partial(self.transports[side].send, message.to_bytes(), target.address, target.transport)

    def _via(self, side: str, transport: str, message: Message) -> Via:
        # The same branch for an INVITE, its CANCEL and the ACK of its error answer, as a
        # stateless proxy must (RFC 3261 16.11): from the branch and CSeq number they share.
        top = Via.parse(message.get("via"))
        seed = f"{top.branch}|{message.call_id}|{message.cseq[0]}|{side}"
        return self._own_via(side, BRANCH + hashlib.sha1(seed.encode()).hexdigest()[:20], transport)

    def _ours(self, value: str) -> bool:
        """Whether a Via value is one the appliance added."""
        try:
            via = Via.parse(value)
        except SipError:
            return False
        return via.branch.startswith(BRANCH) and any(s.is_us(via.host, via.port) for s in self.sides.values())

    # -- where requests go -------------------------------------------------------------------------

    def _first_hop(self, side: str, message: Message) -> tuple[str, tuple[str, int], str]:
        """The Request-URI, address and transport of a request that starts something."""
        uri = Uri.parse(message.uri)
        if side == TRUNK:
            if message.method == "REGISTER":
                raise SipError("registrations go from the PBX side to the operator", 403)
            binding = self.bindings.get(uri.user or "")
            if binding is not None and binding.until > time.monotonic():
                return str(binding.uri), binding.address, binding.transport
        peer_side = self.sides[other(side)]
        if peer_side.peer is None:
            raise SipError(f"no phone is registered for {uri.user}", 480)
        if any(uri.host in (s.host, s.public_host) for s in self.sides.values()):
            uri.host, uri.port = peer_side.peer
        target = self._peer_target(peer_side.name)
        return str(uri), target.address, target.transport

    def _contact_target(self, contact: Uri, side: str) -> tuple[tuple[str, int], str]:
        transport = (contact.params.get("transport") or self.sides[side].transport).upper()
        transport = transport if transport in ("TCP", "TLS") else "UDP"
        return self._resolve((contact.host, contact.port or (5061 if transport == "TLS" else 5060))), transport

    def _resolve(self, address: tuple[str, int]) -> tuple[str, int]:
        """A Contact's host as an address (a name in a Contact is rare: looked up once, and kept)."""
        host, port = address
        if is_ip_address(host):
            return host, port
        if host not in self._resolved:
            try:
                self._resolved[host] = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0]
            except OSError:
                raise SipError(f"cannot resolve {host}", 503) from None
        return self._resolved[host], port

    def _register(self, message: Message) -> None:
        """Remember where a phone registering through the appliance can be reached."""
        default = message.get("expires")
        for value in message.get_all("contact"):
            if value.strip() == "*":
                user = NameAddr.parse(message.get("to")).uri.user
                self.bindings.pop(user or "", None)
                continue
            contact = NameAddr.parse(value)
            expires = contact.params.get("expires") or default or "3600"
            seconds = int(expires) if expires.isdigit() else 3600
            user = contact.uri.user or NameAddr.parse(message.get("to")).uri.user or ""
            if seconds == 0:
                self.bindings.pop(user, None)
            else:
                address, contact_transport = self._contact_target(contact.uri, PBX)
                self.bindings[user] = Binding(contact.uri, address, contact_transport, time.monotonic() + seconds)

    def _registered(self, message: Message) -> None:
        """The registrar's answer lists the appliance's Contacts: show the phone its own, and keep
        each binding as long as the registrar granted."""
        here = self.sides[TRUNK]
        contacts = []
        for value in message.get_all("contact"):
            contact = NameAddr.parse(value)
            binding = self.bindings.get(contact.uri.user or "")
            if binding is not None and here.is_us(contact.uri.host, contact.uri.port):
                contact.uri = binding.uri
                granted = contact.params.get("expires") or message.get("expires") or ""
                if 200 <= message.status < 300 and granted.isdigit():
                    binding.until = time.monotonic() + int(granted)
            contacts.append(str(contact))
        if contacts:
            message.replace_all("contact", contacts)

    # -- the calls ---------------------------------------------------------------------------------

    def _new_dialog(self, side: str, message: Message, cseq: int) -> Dialog:
        now = time.monotonic()
        direction = "incoming" if side == TRUNK else "outgoing"
        dialog = Dialog(message.call_id, side, now, now + (TIMER_C_S if message.method == "INVITE" else SUBSCRIPTION_S),
                        invite_cseq=cseq, from_header=message.get("from"), direction=direction,
                        number=caller_number(message, direction))
        if message.method == "INVITE":
            legs = {}
            try:
                for name, here in self.sides.items():
                    rtp, rtcp = self.ports.open_pair(here.host)
                    legs[name] = Leg(name, rtp, rtcp)
            except NoPortsError as exc:
                for leg in legs.values():
                    leg.rtp.close()
                    leg.rtcp.close()
                raise SipError(str(exc), 503) from None
            dialog.media = MediaSession(self.loop, legs)
        self.dialogs[dialog.call_id] = dialog
        return dialog

    def _invite_answered(self, dialog: Dialog, side: str, message: Message, number: int) -> None:
        status, now = message.status, time.monotonic()
        first = dialog.state == "calling" and number == dialog.invite_cseq
        if dialog.media is None:                # a subscription
            if 200 <= status < 300 and first:
                dialog.state = "confirmed"
            elif status >= 300 and first:
                dialog.state, dialog.expires = "failed", now + LINGER_S
            return
        if 200 <= status < 300:
            if first:
                dialog.state, dialog.answered, dialog.to_header = "confirmed", now, message.get("to")
                self._start_recording(dialog, now)
            self._session_timer(dialog, message)
        elif status >= 300 and first:
            if status in (401, 407):
                dialog.state, dialog.expires = "challenged", now + LINGER_S
                return
            dialog.state, dialog.expires = "failed", now + LINGER_S
            reasons = {487: "cancelled", 486: "busy", 600: "busy", 603: "declined", 408: "no answer", 480: "no answer"}
            self.line.missed(self._facts(dialog, now), now, f"{status} {reasons.get(status, message.reason)}")

    def _facts(self, dialog: Dialog, answered: float) -> CallFacts:
        return CallFacts(dialog.direction, dialog.caller, dialog.number, dialog.started, answered)

    def _start_recording(self, dialog: Dialog, now: float) -> None:
        legs = dialog.media.legs
        # The answer (the callee's SDP, else the offer) says the codec: G.722 first records the
        # call at 16 kHz. The notice goes in its first codec the appliance can encode.
        described = next((legs[side].media for side in (other(dialog.caller), dialog.caller) if legs[side].media), None)
        codec, sent_in = (described.codec, described.playable) if described is not None else (None, None)
        rate = codecs.call_rate(codec)
        recording = self.line.answered(
            self._facts(dialog, now),
            lambda: {leg.media.telephone_event for leg in legs.values() if leg.media is not None},
            notice_possible=sent_in is not None, rate=rate)
        dialog.recording = recording
        dialog.media.tap = recording.rtp
        if sent_in is None:
            log.info("sip trunk %s: no notice or beep can be sent in the call's codec (%s)", self.config.name,
                     codecs.CODECS[codec].name if codec in codecs.CODECS else "none")
        if recording.play_notice:
            channel = recording.channel_from(PBX)
            self.line.notice_started(recording, now)
            sound = self.line.notice_sound
            dialog.media.play(TRUNK, sound.payloads[sent_in], sound.pcm[rate], rate, sent_in,
                              functools.partial(recording.notice_audio, channel),
                              lambda t: self.line.notice_ended(recording, t))
        if sent_in is not None:
            recording.play_beep = functools.partial(self._beep, dialog, recording, sent_in)

    def _beep(self, dialog: Dialog, recording: CallRecording, payload_type: int) -> None:
        """Send the beep to both sides of an outgoing call (`outgoing = "beep"`), each in place of
        what the other side sends while it lasts, and record it in that side's channel."""
        if dialog.media is None or dialog.media.closed:
            return
        beep, rate = self.line.beep, recording.rate
        for toward in (TRUNK, PBX):
            if toward not in dialog.media.notice:
                channel = recording.channel_from(other(toward))
                dialog.media.play(toward, beep.payloads[payload_type], beep.pcm[rate], rate, payload_type,
                                  functools.partial(recording.notice_audio, channel), lambda t: None)

    def _session_timer(self, dialog: Dialog, message: Message) -> None:
        value = (message.get("session-expires") or "").split(";")[0].strip()
        if value.isdigit() and int(value) > 0:
            dialog.session_deadline = time.monotonic() + int(value)

    def _end(self, dialog: Dialog, t: float, reason: str, interrupted: bool = False) -> None:
        if dialog.state != "confirmed":
            return
        dialog.state, dialog.expires = "ended", t + LINGER_S
        if dialog.recording is not None:
            if dialog.media is not None:
                dialog.media.drain()
            self.line.ended(dialog.recording, t, reason, interrupted)
        if dialog.media is not None:
            dialog.media.close()

    def _hang_up(self, dialog: Dialog, reason: str, cause: int) -> None:
        """End a call the appliance found dead: a BYE to each side, as if from the other."""
        log.warning("sip trunk %s: ending call %s: %s", self.config.name, dialog.call_id, reason)
        caller, callee = dialog.caller, other(dialog.caller)
        for side, sender, (from_, to) in ((callee, caller, (dialog.from_header, dialog.to_header)),
                                          (caller, callee, (dialog.to_header, dialog.from_header))):
            contact = dialog.contacts.get(side)
            if contact is None:
                continue
            address, transport = self._contact_target(contact, side)
            dialog.cseq[sender] = dialog.cseq.get(sender, dialog.invite_cseq if sender == caller else 0) + 1
            bye = Message(method="BYE", uri=str(contact))
            branch = f"{BRANCH}{random.getrandbits(64):016x}"
            via = self._own_via(side, branch, transport)
            for name, value in (("via", str(via)), ("max-forwards", "70"), ("from", from_), ("to", to),
                                ("call-id", dialog.call_id), ("cseq", f"{dialog.cseq[sender]} BYE"),
                                ("reason", f'SIP;cause={cause};text="{reason}"')):
                bye.headers.append([name, value])
            self.client.start(branch, functools.partial(self.transports[side].send, bye.to_bytes(), address, transport),
                              transport == "TCP", f"the BYE to the {side} side of call {dialog.call_id}")
        self._end(dialog, time.monotonic(), reason)

    def _forget(self, dialog: Dialog) -> None:
        self.dialogs.pop(dialog.call_id, None)
        if dialog.media is not None:
            dialog.media.close()

    def _tick(self) -> None:
        """Twice a second: move audio toward the spools, end dead calls, forget old dialogs."""
        now = time.monotonic()
        try:
            for dialog in list(self.dialogs.values()):
                if dialog.media is not None:
                    dialog.media.drain()
            self.line.flush(now)
            for dialog in list(self.dialogs.values()):
                self._check(dialog, now)
            for user in [u for u, b in self.bindings.items() if b.until <= now]:
                del self.bindings[user]
            for locator in self.locators.values():
                if locator.due(now):
                    self._look_up(locator.refresh())
            for side, public in self.public.items():
                if public.due(now):
                    self._look_up(public.refresh()).add_done_callback(lambda _, side=side: self._public_found(side))
        except Exception:
            log.exception("sip trunk %s: error in the periodic check", self.config.name)
        self._ticker = self.loop.call_later(TICK_S, self._tick)

    def _look_up(self, refresh) -> asyncio.Task:
        lookup = self.loop.create_task(refresh)
        self._lookups.add(lookup)               # held until done: the loop keeps only a weak one
        lookup.add_done_callback(self._lookups.discard)
        return lookup

    def _public_found(self, side: str) -> None:
        """A side's public address as its STUN server last told it: named in Via, Contact and SDP."""
        address = self.public[side].address
        if address is not None:
            self.sides[side].public_host = address

    def _check(self, dialog: Dialog, now: float) -> None:
        if dialog.media is None:                # a subscription: forgotten when it goes quiet
            if now > dialog.expires:
                self._forget(dialog)
            return
        if dialog.state == "confirmed":
            silent = [leg.side for leg in dialog.media.legs.values()
                      if now - leg.last_received > self.config.rtp_timeout_s]
            if silent and not dialog.on_hold:
                self._hang_up(dialog, f"no RTP from the {dialog.role(silent[0])} for "
                                      f"{self.config.rtp_timeout_s:g} s", 408)
            elif dialog.session_deadline is not None and now > dialog.session_deadline:
                self._hang_up(dialog, "session timer expired", 408)
        elif now > dialog.expires:
            if dialog.state == "calling":
                self.line.missed(self._facts(dialog, now), now, "no final answer")
            self._forget(dialog)
