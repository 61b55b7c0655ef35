"""Who may use the web UI and the API: users (argon2-hashed passwords, a role, the lines they may
see), their sessions, API tokens, login throttling and the one-time setup code. Kept in `<data>/web/accounts.db`,
apart from the catalogue: accounts are the UI's business, not evidence.
"""

import ctypes
import ctypes.util
import hashlib
import json
import os
import re
import secrets
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyotp
import segno
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from zxcvbn import zxcvbn

from appliance.store.catalogue import connect
from appliance.clock import iso_utc
from appliance.errors import CallrecError
from web.throttle import LoginThrottle

ROLES = ("admin", "supervisor", "staff")
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
GOOD_ENOUGH = 3                 # zxcvbn's score: "safely unguessable", at least
SETUP_CODE_VALID_S = 24 * 3600
# Argon2id at OWASP's lower setting (19 MiB, 2 passes, 1 lane) rather than the library's 64 MiB and 4
# lanes: a Pi with 512 MiB runs two at once, each in about a fifth of a second (bench/argon2).
HASH_MEMORY_KIB, HASH_PASSES, HASH_LANES = 19 * 1024, 2, 1
HASHES_AT_ONCE = 2
HASH_WAIT_S = 20
SETUP_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"     # no 0/O, 1/I: read aloud from a console
NAME_PATTERN = r"^[A-Za-z0-9._@-]{1,64}$"
SEEN_EVERY_S = 60               # a session's last use is written at most this often: spare the SD card

BAD_ROLE = "the role must be one of admin, supervisor, staff"
BUSY = "the appliance is checking other logins: try again in a moment"
WRONG = "wrong user name or password"

_hasher = PasswordHasher(time_cost=HASH_PASSES, memory_cost=HASH_MEMORY_KIB, parallelism=HASH_LANES)


def give_hash_memory_back() -> None:
    """Make glibc map large blocks (a hash's 19 MiB) afresh and unmap them when freed. By default
    its threshold for that rises after the first such free, and each server thread then keeps
    19 MiB in its own arena: eight threads, 150 MB, however few hash at once. For the web process
    only: elsewhere (the recorder) large buffers are better kept."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass                        # not glibc: its allocator decides


M_MMAP_THRESHOLD = -3
_hashing = threading.BoundedSemaphore(HASHES_AT_ONCE)
_dummy: list[str] = []          # a hash of nothing, checked for names that are no account


def _hash(password: str) -> str:
    if not _hashing.acquire(timeout=HASH_WAIT_S):
        raise AccountError(BUSY)
    try:
        return _hasher.hash(password)
    finally:
        _hashing.release()


def _verify(password_hash: str, password: str) -> bool:
    if not _hashing.acquire(timeout=HASH_WAIT_S):
        raise AccountError(BUSY)
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
    finally:
        _hashing.release()


def _dummy_hash() -> str:
    if not _dummy:
        _dummy.append(_hash(secrets.token_urlsafe(16)))
    return _dummy[0]


class AccountError(CallrecError, ValueError):
    """A refused account change, with a message for the user."""


@dataclass(frozen=True)
class Principal:
    """Who is asking: a user or an API token, with the role and lines it grants."""

    kind: str                       # "user" or "token"
    id: int
    name: str
    role: str
    lines: tuple[str, ...] | None   # None: every line
    language: str | None = None

    def may_see(self, line: str) -> bool:
        """Whether this principal may see (and hear) calls of `line`."""
        return self.role == "admin" or self.lines is None or line in self.lines

    def at_least(self, role: str) -> bool:
        """Whether this principal's role is `role` or above."""
        return ROLES.index(self.role) <= ROLES.index(role)

    @property
    def actor(self) -> str:
        """The name the audit trail records."""
        return f"{self.kind}:{self.name}"

    @property
    def key(self) -> str:
        """Who this is, for owning things such as export bundles (names may be reused, ids not)."""
        return f"{self.kind}:{self.id}"


def _lines_text(lines) -> str | None:
    return None if lines is None else json.dumps(sorted(set(lines)))


def _principal(kind: str, row: sqlite3.Row) -> Principal:
    lines = None if row["lines"] is None else tuple(json.loads(row["lines"]))
    return Principal(kind, row["id"], row["name"], row["role"], lines,
                     row["language"] if "language" in row.keys() else None)


def token_digest(token: str) -> str:
    """Tokens are long and random: a plain hash is enough to keep them unreadable at rest."""
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    """The accounts database of one data folder (thread-safe)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.RLock()
        self.db = connect(self.folder / "accounts.db")
        self.db.execute("PRAGMA secure_delete = ON")
        self.db.execute("PRAGMA foreign_keys = ON")
        with self._lock:
            self.db.executescript("""
                CREATE TABLE IF NOT EXISTS users (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE COLLATE NOCASE,
                    password_hash TEXT NOT NULL,
                    role TEXT NOT NULL CHECK (role IN ('admin', 'supervisor', 'staff')),
                    lines TEXT, language TEXT, created_at TEXT NOT NULL,
                    second_factor TEXT, second_factor_step INTEGER NOT NULL DEFAULT 0);
                CREATE TABLE IF NOT EXISTS sessions (
                    digest TEXT PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
                    started_at TEXT NOT NULL, last_seen REAL NOT NULL, address TEXT, agent TEXT,
                    ends_at REAL NOT NULL DEFAULT 0);
                CREATE TABLE IF NOT EXISTS tokens (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, digest TEXT NOT NULL UNIQUE,
                    role TEXT NOT NULL CHECK (role IN ('admin', 'supervisor', 'staff')),
                    lines TEXT, created_at TEXT NOT NULL, created_by TEXT NOT NULL, last_used_at TEXT);
            """)
            # Earlier layouts: sessions were a counter on the user; wrong passwords locked the account.
            users = {row["name"] for row in self.db.execute("PRAGMA table_info(users)")}
            for old in ("session_version", "failures", "locked_until"):
                if old in users:
                    self.db.execute(f"ALTER TABLE users DROP COLUMN {old}")
            if "second_factor" not in users:
                self.db.execute("ALTER TABLE users ADD COLUMN second_factor TEXT")
                self.db.execute("ALTER TABLE users ADD COLUMN second_factor_step INTEGER NOT NULL DEFAULT 0")
            if "ends_at" not in {row["name"] for row in self.db.execute("PRAGMA table_info(sessions)")}:
                # A session from before sessions had an end: it ends now (its user logs in again).
                self.db.execute("ALTER TABLE sessions ADD COLUMN ends_at REAL NOT NULL DEFAULT 0")
        self.throttle = LoginThrottle(self.db, self._lock)

    # -- first run ------------------------------------------------------------------------------------

    @property
    def setup_code_path(self) -> Path:
        """The file holding the one-time setup code while no admin exists."""
        return self.folder / "setup-code"

    def needs_setup(self) -> bool:
        """True until an admin account exists."""
        with self._lock:
            return self.db.execute("SELECT 1 FROM users WHERE role = 'admin'").fetchone() is None

    def setup_code(self, renew: bool = False) -> str | None:
        """The one-time setup code, or None once an admin exists. A code lasts SETUP_CODE_VALID_S;
        a new one is made when there is none, the last has expired, or `renew` asks for it."""
        if not self.needs_setup():
            self.setup_code_path.unlink(missing_ok=True)
            return None
        current = self._valid_setup_code()
        if current is not None and not renew:
            return current
        code = "".join(secrets.choice(SETUP_ALPHABET) for _ in range(12))
        code = "-".join(code[i:i + 4] for i in range(0, 12, 4))
        fresh = self.setup_code_path.with_suffix(".new")
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(code + "\n")
        os.replace(fresh, self.setup_code_path)
        return code

    def _valid_setup_code(self) -> str | None:
        try:
            made = self.setup_code_path.stat().st_mtime
            code = self.setup_code_path.read_text().strip()
        except FileNotFoundError:
            return None
        return code if time.time() - made < SETUP_CODE_VALID_S else None

    def complete_setup(self, code: str, name: str, password: str) -> Principal:
        """Create the first admin if `code` is the setup code still valid; the code is then spent."""
        if not self.needs_setup():
            raise AccountError("setup is already done: log in")
        expected = self._valid_setup_code()
        if expected is None and self.setup_code_path.exists():
            raise AccountError("the setup code has expired: run `callrec setup-code` on the appliance for a new one")
        given = code.strip().upper().replace(" ", "").encode("utf-8", "surrogateescape")
        if expected is None or not secrets.compare_digest(given, expected.encode()):
            raise AccountError("the setup code is wrong (it is printed in the appliance's log and console)")
        user = self.add_user(name, password, "admin", None)
        self.setup_code_path.unlink(missing_ok=True)
        return user

    # -- users -----------------------------------------------------------------------------------------

    def add_user(self, name: str, password: str, role: str, lines, language: str | None = None) -> Principal:
        """Create a user; raises AccountError with the reason when refused."""
        if not re.fullmatch(NAME_PATTERN, name or ""):
            raise AccountError("a user name is 1 to 64 letters, digits or . _ @ -")
        if role not in ROLES:
            raise AccountError(BAD_ROLE)
        check_password(password, name)
        password_hash = _hash(password)
        with self._lock:
            try:
                cursor = self.db.execute(
                    "INSERT INTO users (name, password_hash, role, lines, language, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    [name, password_hash, role, _lines_text(lines), language, iso_utc(time.time())])
            except sqlite3.IntegrityError:
                raise AccountError("there is already a user {name}", name=repr(name)) from None
        return self.user(cursor.lastrowid)

    def user(self, user_id: int) -> Principal | None:
        """A user by id, or None."""
        with self._lock:
            row = self.db.execute("SELECT * FROM users WHERE id = ?", [user_id]).fetchone()
        return _principal("user", row) if row is not None else None

    def users(self) -> list[dict]:
        """Every user, for the users page (no password hashes); `slowed_until`: when a user's name
        may be tried again after wrong passwords (None: now)."""
        with self._lock:
            rows = self.db.execute("SELECT id, name, role, lines, language, created_at, second_factor IS NOT NULL AS second_factor "
                                   "FROM users ORDER BY name").fetchall()
        slowed = self.throttle.slowed_names()
        return [{**dict(row), "lines": None if row["lines"] is None else json.loads(row["lines"]),
                 "slowed_until": iso_utc(slowed[row["name"].lower()]) if row["name"].lower() in slowed else None}
                for row in rows]

    def authenticate(self, name: str, password: str) -> Principal:
        """Check a name and password (the throttle is the caller's, before this). A name that is
        no account costs the same hash check, so the time taken does not tell which names exist."""
        with self._lock:
            row = self.db.execute("SELECT * FROM users WHERE name = ?", [name]).fetchone()
        # Hashing takes a good part of a second on a Pi: never while holding the lock.
        if not _verify(row["password_hash"] if row is not None else _dummy_hash(), password[:MAX_PASSWORD]) or row is None:
            raise AccountError(WRONG)
        if _hasher.check_needs_rehash(row["password_hash"]):
            rehash = _hash(password)
            with self._lock:
                self.db.execute("UPDATE users SET password_hash = ? WHERE id = ?", [rehash, row["id"]])
        return _principal("user", row)

    def check_user_password(self, user_id: int, password: str) -> bool:
        """Whether `password` is the user's own (to confirm a sensitive change)."""
        with self._lock:
            row = self.db.execute("SELECT password_hash FROM users WHERE id = ?", [user_id]).fetchone()
        return row is not None and _verify(row["password_hash"], password[:MAX_PASSWORD])

    def update_user(self, user_id: int, *, role: str | None = None, lines=..., password: str | None = None,
                    language=..., unlock: bool = False, keep_session: str | None = None) -> None:
        """Change a user. A new role or lines apply at the user's next request; a new password ends
        the user's sessions (all but `keep_session`, the one making the change)."""
        if role is not None and role not in ROLES:
            raise AccountError(BAD_ROLE)
        sets, params = [], []
        if role is not None:
            sets.append("role = ?")
            params.append(role)
        if lines is not ...:
            sets.append("lines = ?")
            params.append(_lines_text(lines))
        if password is not None:
            current = self.user(user_id)
            check_password(password, current.name if current else "")
            sets.append("password_hash = ?")
            params.append(_hash(password))
        if language is not ...:
            sets.append("language = ?")
            params.append(language)
        if unlock:
            found = self.user(user_id)
            if found is not None:
                self.throttle.clear(found.name)
        if not sets:
            return
        with self._lock:
            if role is not None and role != "admin" and self._last_admin(user_id):
                raise AccountError("the last admin cannot lose the admin role")
            self.db.execute(f"UPDATE users SET {', '.join(sets)} WHERE id = ?", [*params, user_id])
            if password is not None:
                self.end_sessions(user_id, keep=keep_session)

    # -- second factor (TOTP, RFC 6238) -------------------------------------------------------------------

    def second_factor(self, user_id: int) -> bool:
        """Whether the user's login asks for a code after the password."""
        with self._lock:
            row = self.db.execute("SELECT second_factor FROM users WHERE id = ?", [user_id]).fetchone()
        return row is not None and row["second_factor"] is not None

    @staticmethod
    def new_second_factor_secret() -> str:
        """A fresh TOTP secret, to show at enrolment (kept only once confirmed by a code)."""
        return pyotp.random_base32()

    def enrolment(self, name: str, secret: str) -> dict:
        """What an authenticator app needs: the secret, its otpauth URI and that URI as a QR code (SVG data URI)."""
        uri = pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=f"callrec {socket.gethostname()}")
        return {"secret": secret, "uri": uri, "qr": segno.make(uri, error="m").svg_data_uri(scale=4)}

    def set_second_factor(self, user_id: int, secret: str, code: str) -> None:
        """Turn the second factor on with `secret`, once `code` shows the app has it."""
        step = _totp_step(secret, code) if secret else None
        if step is None:
            raise AccountError("the code does not match: scan the QR code again and type the code the app shows now")
        with self._lock:
            self.db.execute("UPDATE users SET second_factor = ?, second_factor_step = ? WHERE id = ?", [secret, step, user_id])

    def check_second_factor(self, user_id: int, code: str) -> bool:
        """Whether `code` is the user's current one and unused (a code works once)."""
        with self._lock:
            row = self.db.execute("SELECT second_factor, second_factor_step FROM users WHERE id = ?", [user_id]).fetchone()
            if row is None or row["second_factor"] is None:
                return False
            step = _totp_step(row["second_factor"], code)
            if step is None or step <= row["second_factor_step"]:
                return False
            self.db.execute("UPDATE users SET second_factor_step = ? WHERE id = ?", [step, user_id])
        return True

    def clear_second_factor(self, user_id: int) -> None:
        """Turn the user's second factor off (a lost phone: an admin or `callrec user password` does it)."""
        with self._lock:
            self.db.execute("UPDATE users SET second_factor = NULL, second_factor_step = 0 WHERE id = ?", [user_id])

    def delete_user(self, user_id: int) -> None:
        """Remove a user (never the last admin)."""
        with self._lock:
            if self._last_admin(user_id):
                raise AccountError("the last admin cannot be deleted")
            self.db.execute("DELETE FROM users WHERE id = ?", [user_id])

    # -- sessions ----------------------------------------------------------------------------------------

    def start_session(self, user_id: int, address: str | None, agent: str | None, idle_s: float,
                      lifetime_s: float) -> str:
        """A new session of the user, ending after `lifetime_s` whatever its use: the token for
        its cookie (only its digest is kept). Sessions idle or over are forgotten on the way."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            self.db.execute("DELETE FROM sessions WHERE last_seen < ? OR ends_at < ?", [now - idle_s, now])
            self.db.execute("INSERT INTO sessions (digest, user_id, started_at, last_seen, address, agent, ends_at) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [token_digest(token), user_id, iso_utc(now), now, address, (agent or "")[:200],
                             now + lifetime_s])
        return token

    def session_user(self, token: str, idle_s: float, touch: bool = True) -> Principal | None:
        """The user of a session still open (used within `idle_s`, before its end), or None.
        `touch`: count this as a use (a status stream checking on its session does not)."""
        digest, now = token_digest(token), time.time()
        with self._lock:
            row = self.db.execute("SELECT users.*, sessions.last_seen, sessions.ends_at FROM sessions JOIN users "
                                  "ON users.id = sessions.user_id WHERE digest = ?", [digest]).fetchone()
            if row is None:
                return None
            if row["last_seen"] < now - idle_s or row["ends_at"] < now:
                self.db.execute("DELETE FROM sessions WHERE digest = ?", [digest])
                return None
            if touch and row["last_seen"] < now - SEEN_EVERY_S:
                self.db.execute("UPDATE sessions SET last_seen = ? WHERE digest = ?", [now, digest])
        return _principal("user", row)

    def end_session(self, token: str) -> None:
        """Log one session out."""
        with self._lock:
            self.db.execute("DELETE FROM sessions WHERE digest = ?", [token_digest(token)])

    def end_sessions(self, user_id: int, keep: str | None = None) -> int:
        """Log the user out everywhere (but the session `keep`); how many sessions ended."""
        with self._lock:
            return self.db.execute("DELETE FROM sessions WHERE user_id = ? AND digest != ?",
                                   [user_id, token_digest(keep) if keep else ""]).rowcount

    def sessions(self, idle_s: float) -> dict[int, list[dict]]:
        """The open sessions of each user (by id), most recently used first."""
        with self._lock:
            rows = self.db.execute("SELECT user_id, started_at, last_seen, address, agent FROM sessions "
                                   "WHERE last_seen >= ? ORDER BY last_seen DESC", [time.time() - idle_s]).fetchall()
        found: dict[int, list[dict]] = {}
        for row in rows:
            found.setdefault(row["user_id"], []).append({**dict(row), "last_seen": iso_utc(row["last_seen"])})
        return found

    def _last_admin(self, user_id: int) -> bool:
        admins = [row[0] for row in self.db.execute("SELECT id FROM users WHERE role = 'admin'")]
        return admins == [user_id]

    # -- API tokens ------------------------------------------------------------------------------------

    def add_token(self, name: str, role: str, lines, created_by: str) -> str:
        """Create an API token; returns it (shown once: only its hash is kept)."""
        if not name.strip():
            raise AccountError("give the token a name (what uses it, e.g. the CRM)")
        if role not in ROLES:
            raise AccountError(BAD_ROLE)
        token = "crt_" + secrets.token_urlsafe(32)
        with self._lock:
            self.db.execute("INSERT INTO tokens (name, digest, role, lines, created_at, created_by) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            [name.strip(), token_digest(token), role, _lines_text(lines),
                             iso_utc(time.time()), created_by])
        return token

    def token(self, token: str) -> Principal | None:
        """The principal of a presented API token, or None."""
        with self._lock:
            row = self.db.execute("SELECT * FROM tokens WHERE digest = ?", [token_digest(token)]).fetchone()
            if row is None:
                return None
            self.db.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", [iso_utc(time.time()), row["id"]])
        return _principal("token", row)

    def tokens(self) -> list[dict]:
        """Every token (never the token itself)."""
        with self._lock:
            rows = self.db.execute("SELECT id, name, role, lines, created_at, created_by, last_used_at "
                                   "FROM tokens ORDER BY id").fetchall()
        return [{**dict(row), "lines": None if row["lines"] is None else json.loads(row["lines"])} for row in rows]

    def revoke_token(self, token_id: int) -> None:
        """Delete a token: it stops working at once."""
        with self._lock:
            self.db.execute("DELETE FROM tokens WHERE id = ?", [token_id])

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self.db.close()


def _totp_step(secret: str, code: str) -> int | None:
    """The time step whose code `code` is (this one or the one before or after: clocks drift), or None."""
    code = "".join(c for c in code if c.isdigit())
    if len(code) != 6:
        return None
    totp, now = pyotp.TOTP(secret), time.time()
    for drift in (0, -1, 1):
        at = now + drift * totp.interval
        if secrets.compare_digest(totp.at(at), code):
            return totp.timecode(datetime.fromtimestamp(at))
    return None


def check_password(password: str, name: str = "") -> None:
    """Refuse a password that is short, too long, one of the most common passwords (zxcvbn's list
    of 30,000 from breaches) or otherwise easy to guess (zxcvbn's score, the user's name counted)."""
    password = password or ""
    if len(password) < MIN_PASSWORD:
        raise AccountError("a password has at least {n} characters", n=MIN_PASSWORD)
    if len(password) > MAX_PASSWORD:
        raise AccountError("a password has at most {n} characters", n=MAX_PASSWORD)
    # zxcvbn slows down on long inputs; the first 100 characters tell enough.
    verdict = zxcvbn(password[:100], user_inputs=[name, "callrec", "recorder"] if name else ["callrec", "recorder"])
    if any(match.get("dictionary_name") == "passwords" and match["token"].lower() == password.lower()
           for match in verdict["sequence"]):
        raise AccountError("this password is one of the most common ones: choose another")
    if verdict["score"] < GOOD_ENOUGH:
        raise AccountError("this password is too easy to guess: use a few unusual words, or make it longer")
