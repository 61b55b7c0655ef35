"""A person's number as a keyed hash: how the appliance names someone it must not keep the number
of (an erasure's record, the do-not-record list).

HMAC-SHA256 of the number's normalised form under a key derived from the device key: the same
number always gives the same hash on this box, so a number given again can be checked; nobody can
compute it, or test a guessed number against it, without the device's data folder.
"""

import hashlib
import hmac

from appliance.contacts import ContactsError, normalise
from appliance.keys import derived_key

KEY_LABEL = b"callrec erasure subject"


def subject_key(data_dir, opener=None) -> bytes:
    """The key of this device's subject hashes; in a sealed store, an erasure's record and a
    rectification's old values take theirs from the store secret (`opener`), which the card alone
    does not hold."""
    if opener is not None:
        return opener.derived_key(b"subjects")
    return derived_key(data_dir, KEY_LABEL)


def subject_hash(key: bytes, number: str, country_code: str = "32") -> str:
    """The keyed hash of a number (normalised first, so every written form gives the same)."""
    try:
        canonical = normalise(number, country_code)
    except ContactsError:
        canonical = number.strip()
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()
