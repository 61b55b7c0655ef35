"""SRTP with its keys in the SDP (SDES, RFC 4568), through libsrtp (pylibsrtp).

The appliance ends each side's SRTP: what a side sends is decrypted with the key that side put in
its SDP (its `a=crypto` line), so the recording gets the audio; what goes to a side is encrypted
with the appliance's own key for that side, the one it put in the SDP it sent there. So each side
sees the appliance as its peer, the notice goes out encrypted like the rest, and neither side's
key ever reaches the other.
"""

import base64
import os
from dataclasses import dataclass

from pylibsrtp import Error, Policy, Session

# The suites the appliance speaks (RFC 4568, RFC 7714), with the length of their master key + salt.
SUITES = {
    "AES_CM_128_HMAC_SHA1_80": (Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30),
    "AES_CM_128_HMAC_SHA1_32": (Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 30),
    "AEAD_AES_128_GCM": (Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 28),
    "AEAD_AES_256_GCM": (Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 44),
}


@dataclass(frozen=True)
class Crypto:
    """One `a=crypto` line: its tag, suite and master key + salt."""

    tag: int
    suite: str
    key: bytes

    def line(self) -> str:
        """As an SDP attribute line."""
        return f"a=crypto:{self.tag} {self.suite} inline:{base64.b64encode(self.key).decode()}"


def parse_crypto(value: str) -> Crypto | None:
    """The value of an `a=crypto:` attribute, or None when the appliance cannot use it (another
    suite, several keys, an MKI, session parameters that change the packets)."""
    fields = value.split()
    if len(fields) < 3 or not fields[0].isdigit() or fields[1] not in SUITES or len(fields) > 3:
        return None
    key_params = fields[2]
    if not key_params.startswith("inline:") or ";" in key_params:
        return None
    encoded, *extra = key_params[len("inline:"):].split("|")
    if any(":" in part for part in extra):           # an MKI: packets would carry it
        return None
    try:
        key = base64.b64decode(encoded, validate=True)
    except ValueError:
        return None
    if len(key) != SUITES[fields[1]][1]:
        return None
    return Crypto(int(fields[0]), fields[1], key)


def our_crypto(theirs: Crypto, keys: dict[str, bytes]) -> Crypto:
    """The appliance's `a=crypto` answering or passing on `theirs`: the same tag and suite, the
    appliance's own key for that suite toward that side (made once per side and suite, in `keys`)."""
    if theirs.suite not in keys:
        keys[theirs.suite] = os.urandom(SUITES[theirs.suite][1])
    return Crypto(theirs.tag, theirs.suite, keys[theirs.suite])


class Srtp:
    """One direction's SRTP session: decrypting what a side sends, or encrypting what goes to it."""

    def __init__(self, crypto: Crypto, inbound: bool):
        self.crypto = crypto
        self.inbound = inbound
        profile, _ = SUITES[crypto.suite]
        ssrc = Policy.SSRC_ANY_INBOUND if inbound else Policy.SSRC_ANY_OUTBOUND
        self._session = Session(Policy(key=crypto.key, ssrc_type=ssrc, srtp_profile=profile))
        self.dropped = 0        # packets that failed authentication, replays

    def rtp(self, packet: bytes) -> bytes | None:
        """Decrypt (inbound) or encrypt a packet; None when it fails (forged, replayed, damaged)."""
        try:
            return self._session.unprotect(packet) if self.inbound else self._session.protect(packet)
        except Error:
            self.dropped += 1
            return None

    def rtcp(self, packet: bytes) -> bytes | None:
        """The same for an RTCP packet."""
        try:
            return self._session.unprotect_rtcp(packet) if self.inbound else self._session.protect_rtcp(packet)
        except Error:
            self.dropped += 1
            return None
