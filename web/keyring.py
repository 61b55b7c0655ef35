"""The key slots of a sealed store as the web's users keep them: a login unlocks the store, and each
user's slot follows their password.

Every user may hold a slot (`appliance.store.keyslots`, holder `user:<id>`) that their password
opens. A login with a slot unlocks a locked store for the web process (in RAM only). A slot is
given, or wrapped again, only while the store is unlocked, since it wraps the store secret:
- a user added, or a password set, while the store is unlocked gets a slot with that password;
- a password set while the store is locked removes the user's slot (it would open with the old
  password); so does deleting the user;
- a user without a slot (added while locked, or whose password changed while locked) gets one at
  their first login once the store is unlocked, from the password they log in with.
The first admin of a store sealed before anyone had a slot gets theirs with the recovery key.
In a store that is not sealed nothing here does anything.
"""

import logging
import secrets
import threading
import time
from pathlib import Path

from appliance.store.keyslots import KeySlotError, KeySlots
from web.accounts import AccountError
from web.backend import backend

log = logging.getLogger(__name__)

# A password typed before a second factor's code, kept in RAM (never in the session cookie) until
# the code is typed or SECOND_FACTOR_S have passed: the slot is opened once the login is complete.
_waiting: dict[str, tuple[str, float]] = {}
_waiting_lock = threading.Lock()
# The slots file is read, changed and written whole: two logins at once must not lose a slot.
_slots_lock = threading.Lock()


def holder(user_id: int) -> str:
    """A web user's name among the store's key slots."""
    return f"user:{user_id}"


def set_slot(data_dir: Path, user_id: int, password: str, secret: bytes | None) -> bool:
    """After a user's password was set: with the store `secret`, give them a slot that the password
    opens; without it, remove their old slot. True when they have a slot now."""
    slots = KeySlots(data_dir)
    with _slots_lock:
        if secret is not None:
            slots.add(holder(user_id), password, secret)
            return True
        slots.remove(holder(user_id))
        return False


def needs_recovery_key() -> bool:
    """True when the store is sealed and no one holds a slot: only the recovery key unlocks it."""
    return backend().sealer is not None and not KeySlots(backend().data_dir).holders()


def recovery_secret(text: str) -> bytes:
    """The store secret from a recovery key typed at setup; AccountError when it is not this store's."""
    if not text.strip():
        raise AccountError("the store is sealed and no user holds a key to it yet: type its recovery key")
    try:
        return KeySlots(backend().data_dir).unlock_with_recovery(text)
    except KeySlotError:
        raise AccountError("this is not the store's recovery key: check it against the printed copy") from None


def logged_in(user, password: str, address: str | None) -> None:
    """A user logged in with `password`: their slot unlocks a locked store; a user without a slot
    gets one if the store is unlocked. A slot the password does not open unlocks nothing."""
    web = backend()
    if web.sealer is None:
        return
    slots = KeySlots(web.data_dir)
    if holder(user.id) not in slots.holders():
        if not web.locked:
            set_slot(web.data_dir, user.id, password, web.secret)
            web.catalogue.add_audit(user.actor, "key-slot-added", detail="at login", address=address)
        return
    if web.locked:
        try:
            web.unlock(slots.unlock(holder(user.id), password))
        except KeySlotError as exc:
            log.warning("%s logged in but the store stays locked: %s", user.actor, exc)
            return
        web.catalogue.add_audit(user.actor, "store-unlocked", address=address)


def hold_password(password: str, seconds: float) -> str | None:
    """Keep the password of a login that waits for its second factor; a token to take it back
    with (None for a store that is not sealed: nothing to keep)."""
    if backend().sealer is None:
        return None
    token, now = secrets.token_urlsafe(16), time.monotonic()
    with _waiting_lock:
        for old in [t for t, (_, until) in _waiting.items() if until < now]:
            del _waiting[old]
        _waiting[token] = (password, now + seconds)
    return token


def held_password(token: str | None) -> str | None:
    """The password kept under `token` (once: it is forgotten), or None when it has expired."""
    with _waiting_lock:
        password, until = _waiting.pop(token, (None, 0.0)) if token else (None, 0.0)
    return password if until >= time.monotonic() else None


def unlock_with_recovery(secret: bytes, user, password: str, address: str | None) -> None:
    """The first admin typed the recovery key: the store is unlocked and they get a slot."""
    web = backend()
    web.unlock(secret)
    set_slot(web.data_dir, user.id, password, secret)
    web.catalogue.add_audit(user.actor, "store-unlocked", detail="recovery key", address=address)


def password_set(user_id: int, password: str) -> None:
    """A user's password was set (by themselves or an admin): their slot follows it."""
    web = backend()
    if web.sealer is not None:
        set_slot(web.data_dir, user_id, password, None if web.locked else web.secret)


def user_added(user, password: str) -> None:
    """A user was added: a slot with their password, if the store is unlocked."""
    web = backend()
    if web.sealer is not None and not web.locked:
        set_slot(web.data_dir, user.id, password, web.secret)


def user_deleted(user_id: int) -> None:
    """A user was deleted: their slot goes with them."""
    web = backend()
    if web.sealer is not None:
        with _slots_lock:
            KeySlots(web.data_dir).remove(holder(user_id))
