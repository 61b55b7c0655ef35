"""A person's number as a keyed hash: how the appliance names someone it must not keep the number
of (an erasure's record, the do-not-record list).

HMAC-SHA256 of the number's normalised form under a key of the device's own (`keys/subjects.key`,
which once was derived from the device key and keeps that value): the same number
always gives the same hash on this box, so a number given again can be checked; nobody can compute
it, or test a guessed number against it, without the device's data folder. In a sealed store the
key is the store secret's instead (`subject_key` with the opener), so the card alone does not do.
"""

import hashlib
import hmac

from appliance.contacts import ContactsError, normalise
from appliance.keys import SUBJECTS_KEY_FILE, shared_key

KEY_LABEL = b"callrec erasure subject"


SEALED_LABEL = b"subjects"


def subject_key(data_dir, opener=None) -> bytes:
    """The key of this device's subject hashes: for a sealed store, give the unlocked `opener`
    (`appliance.store.sealing.Opener`) and the key is the store secret's; otherwise the key file's."""
    if opener is not None:
        return opener.derived_key(SEALED_LABEL)
    return shared_key(data_dir, SUBJECTS_KEY_FILE, KEY_LABEL)


def subject_hash(key: bytes, number: str, country_code: str = "32") -> str:
    """The keyed hash of a number (normalised first, so every written form gives the same)."""
    try:
        canonical = normalise(number, country_code)
    except ContactsError:
        canonical = number.strip()
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()
