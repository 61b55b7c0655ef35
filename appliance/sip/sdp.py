"""Session descriptions (RFC 4566, offer/answer RFC 3264) rewritten to the media anchor.

Each SDP that crosses the appliance is rewritten so that the other side sends its RTP to the
appliance: the connection address and the audio port become the anchor's. The first audio stream
keeps only what the appliance can record — the codecs of codecs.py (G.711, G.722, G.729, GSM), RFC
4733 telephone events and comfort noise —, those it can send the notice in first (so that the
answer to an offer of G.729 and G.711 takes G.711 when it can); other streams (video, a second
audio stream) are refused with port 0, and ICE and RTCP-port attributes go, since the anchor
answers on its own ports. An SRTP stream (SDES keys, RFC 4568) keeps its profile, and its
`a=crypto` line carries the appliance's own key for the side the SDP goes to (see srtp.py).
"""

import re
from dataclasses import dataclass

from appliance.sip.codecs import CODECS, playable
from appliance.sip.message import SipError
from appliance.sip.srtp import SUITES, Crypto, our_crypto, parse_crypto

COMFORT_NOISE = 13
SECURE_PROFILES = ("RTP/SAVP", "RTP/SAVPF")
PROFILES = ("RTP/AVP", "RTP/AVPF", *SECURE_PROFILES)
DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
DROPPED_ATTRIBUTES = ("rtcp", "rtcp-mux", "candidate", "ice-ufrag", "ice-pwd", "ice-options",
                      "end-of-candidates", "remote-candidates", "crypto", "fingerprint", "setup")
CONNECTION = re.compile(r"IN\s+IP[46]\s+(\S+)")


class SdpError(SipError):
    """An SDP body that cannot be anchored; an offer with it is answered with `status`."""


@dataclass(frozen=True)
class Media:
    """What one side said about its audio: where it wants RTP, which payload types, which way."""

    address: str
    port: int
    payloads: tuple[int, ...]              # in the order it listed them
    telephone_event: int | None
    direction: str
    crypto: Crypto | None = None            # the key it encrypts what it sends with (SRTP)
    secure_profile: bool = False            # RTP/SAVP: it will take nothing unencrypted

    @property
    def codec(self) -> int | None:
        """The recorded codec it lists first (the one it prefers), or None."""
        return next((pt for pt in self.payloads if pt in CODECS), None)

    @property
    def playable(self) -> int | None:
        """The first payload type of its list that the appliance can send a sound in, or None."""
        return playable(self.payloads)

    @property
    def on_hold(self) -> bool:
        """True when this description holds the stream (not sendrecv, or the null address)."""
        return self.direction != "sendrecv" or self.address in ("0.0.0.0", "::") or self.port == 0


def anchor(body: bytes, address: str, port: int, keys: dict[str, bytes] | None = None,
           toward: Media | None = None) -> tuple[bytes, Media, Crypto | None]:
    """Rewrite an SDP body to the anchor at `address`:`port`, for the side whose last description
    was `toward` and whose SRTP keys from the appliance are in `keys`; return it with what the body
    said and the `a=crypto` it now carries (None: that side is sent plain RTP)."""
    try:
        lines = [line.rstrip("\r") for line in body.decode("utf-8").split("\n") if line.strip()]
    except UnicodeDecodeError:
        raise SdpError("SDP is not UTF-8") from None
    if not lines or lines[0].strip() != "v=0":
        raise SdpError("SDP does not start with v=0")
    if any(len(line) < 2 or line[1] != "=" for line in lines):
        raise SdpError("unreadable SDP line")
    sections = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    session, streams = sections[0], sections[1:]
    session_address = _connection(session)
    session_direction = _direction(session, "sendrecv")
    out = [_rewrite_common(line, address) for line in session if _keep(line, [])]
    media = None
    for stream in streams:
        fields = stream[0][2:].split()
        if len(fields) < 4 or not fields[1].split("/")[0].isdigit():
            raise SdpError(f"bad media line {stream[0][:60]!r}")
        kind, proto = fields[0], fields[2]
        if media is None and kind == "audio" and proto in PROFILES and int(fields[1].split("/")[0]) > 0:
            stream_address = _connection(stream) or session_address
            if stream_address is None:
                raise SdpError("no connection address for the audio stream")
            kept, events = _payloads(stream, fields[3:])
            media = Media(stream_address, int(fields[1].split("/")[0]), tuple(kept), events,
                          _direction(stream, session_direction), _crypto(stream), proto in SECURE_PROFILES)
            if media.codec is None:
                raise SdpError(f"no codec the appliance can record ({', '.join(c.name for c in CODECS.values())}) "
                               f"in the audio stream", 488)
            if media.secure_profile and media.crypto is None:
                raise SdpError(f"no SRTP key in a suite the appliance speaks ({', '.join(SUITES)}) "
                               f"without an MKI", 488)
            # An SRTP side is answered with SRTP (with the appliance's key), whatever the other side does.
            theirs = media.crypto or (toward.crypto if toward is not None else None)
            sent = our_crypto(theirs, keys if keys is not None else {}) if theirs else None
            secure = media.secure_profile or (toward is not None and toward.secure_profile)
            # Those the notice can be sent in first: the other side's answer then takes one if it can.
            listed = sorted(kept, key=lambda pt: (0 if CODECS[pt].encodes else 1) if pt in CODECS else 2)
            out.append(f"m=audio {port} {'RTP/SAVP' if secure else 'RTP/AVP'} {' '.join(map(str, listed))}")
            out += [_rewrite_common(line, address) for line in stream[1:] if _keep(line, kept)]
            out += [sent.line()] if sent else []
        else:
            out.append(f"m={kind} 0 {' '.join(fields[2:])}")
            out += [_rewrite_common(line, address) for line in stream[1:]]
    if media is None:
        raise SdpError("no audio stream the appliance can record (RTP/AVP or RTP/SAVP)", 488)
    return ("\r\n".join(out) + "\r\n").encode(), media, sent


def _crypto(stream: list[str]) -> Crypto | None:
    """The first `a=crypto` line of a stream that the appliance can use."""
    for line in stream:
        if line.startswith("a=crypto:") and (crypto := parse_crypto(line[len("a=crypto:"):])) is not None:
            return crypto
    return None


def _connection(lines: list[str]) -> str | None:
    for line in lines:
        if line.startswith("c="):
            match = CONNECTION.match(line[2:].strip())
            if not match:
                raise SdpError(f"bad connection line {line[:60]!r}")
            return match.group(1).split("/")[0]
    return None


def _direction(lines: list[str], default: str) -> str:
    for line in lines:
        if line[2:].strip() in DIRECTIONS and line.startswith("a="):
            return line[2:].strip()
    return default


def _payloads(stream: list[str], formats: list[str]) -> tuple[list[int], int | None]:
    """The payload types to keep, and the telephone-event one."""
    names = {}
    for line in stream:
        if line.startswith("a=rtpmap:"):
            pt, _, encoding = line[9:].partition(" ")
            if pt.isdigit():
                names[int(pt)] = encoding.strip().lower()
    kept, events = [], None
    for item in formats:
        if not item.isdigit():
            raise SdpError(f"bad payload type {item!r}")
        pt = int(item)
        name = names.get(pt, "")
        if pt in CODECS or pt == COMFORT_NOISE:
            kept.append(pt)
        elif name.startswith("telephone-event/8000") and events is None:
            kept.append(pt)
            events = pt
    return kept, events


def _keep(line: str, kept: list[int]) -> bool:
    """Whether an attribute line of the anchored stream stays."""
    if not line.startswith("a="):
        return True
    name, _, value = line[2:].partition(":")
    if name in DROPPED_ATTRIBUTES:
        return False
    if name in ("rtpmap", "fmtp"):
        pt = value.split(" ", 1)[0]
        return pt.isdigit() and int(pt) in kept
    return True


def _rewrite_common(line: str, address: str) -> str:
    """Origin and connection lines name the anchor; everything else stays as it is."""
    family = "IP6" if ":" in address else "IP4"
    if line.startswith("c="):
        return f"c=IN {family} {address}"
    if line.startswith("o="):
        fields = line[2:].split()
        if len(fields) == 6:
            return f"o={' '.join(fields[:3])} IN {family} {address}"
    return line
