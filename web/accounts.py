"""Who may use the web UI and the API: users (argon2-hashed passwords, a role, the lines they may
see), their sessions, API tokens, login failures and the one-time setup code. Kept in `<data>/web/accounts.db`,
apart from the catalogue: accounts are the UI's business, not evidence.
"""

import hashlib
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from appliance.store.catalogue import connect
from appliance.clock import iso_utc
from appliance.errors import CallrecError

ROLES = ("admin", "supervisor", "staff")
MAX_FAILURES = 5                # the 6th wrong password in a row finds the account locked
LOCKOUT_S = 15 * 60
MIN_PASSWORD = 10
SETUP_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"     # no 0/O, 1/I: read aloud from a console
NAME_PATTERN = r"^[A-Za-z0-9._@-]{1,64}$"
SEEN_EVERY_S = 60               # a session's last use is written at most this often: spare the SD card

BAD_ROLE = "the role must be one of admin, supervisor, staff"
LOCKED = ("this account is locked after repeated wrong passwords: "
          "try again in 15 minutes or ask an admin to unlock it")

_hasher = PasswordHasher()


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
        self._unknown: dict[str, int] = {}     # wrong logins per name that is no account
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
                    failures INTEGER NOT NULL DEFAULT 0, locked_until REAL NOT NULL DEFAULT 0);
                CREATE TABLE IF NOT EXISTS sessions (
                    digest TEXT PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
                    started_at TEXT NOT NULL, last_seen REAL NOT NULL, address TEXT, agent TEXT);
                CREATE TABLE IF NOT EXISTS tokens (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, digest TEXT NOT NULL UNIQUE,
                    role TEXT NOT NULL CHECK (role IN ('admin', 'supervisor', 'staff')),
                    lines TEXT, created_at TEXT NOT NULL, created_by TEXT NOT NULL, last_used_at TEXT);
            """)
            if "session_version" in {row["name"] for row in self.db.execute("PRAGMA table_info(users)")}:
                # Sessions were a counter on the user before they were rows of their own.
                self.db.execute("ALTER TABLE users DROP COLUMN session_version")

    # -- first run ------------------------------------------------------------------------------------

    @property
    def setup_code_path(self) -> Path:
        """The file holding the one-time setup code while no admin exists."""
        return self.folder / "setup-code"

    def needs_setup(self) -> bool:
        """True until an admin account exists."""
        with self._lock:
            return self.db.execute("SELECT 1 FROM users WHERE role = 'admin'").fetchone() is None

    def setup_code(self) -> str | None:
        """The one-time setup code (made on first use), or None once an admin exists."""
        if not self.needs_setup():
            self.setup_code_path.unlink(missing_ok=True)
            return None
        try:
            return self.setup_code_path.read_text().strip()
        except FileNotFoundError:
            code = "".join(secrets.choice(SETUP_ALPHABET) for _ in range(12))
            code = "-".join(code[i:i + 4] for i in range(0, 12, 4))
            fd = os.open(self.setup_code_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(code + "\n")
            return code

    def complete_setup(self, code: str, name: str, password: str) -> Principal:
        """Create the first admin if `code` is the setup code; the code is then spent."""
        expected = self.setup_code()
        if expected is None:
            raise AccountError("setup is already done: log in")
        if not secrets.compare_digest(code.strip().upper().replace(" ", ""), expected):
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
        _check_password(password)
        with self._lock:
            try:
                cursor = self.db.execute(
                    "INSERT INTO users (name, password_hash, role, lines, language, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    [name, _hasher.hash(password), role, _lines_text(lines), language, iso_utc(time.time())])
            except sqlite3.IntegrityError:
                raise AccountError("there is already a user {name}", name=repr(name)) from None
        return self.user(cursor.lastrowid)

    def user(self, user_id: int) -> Principal | None:
        """A user by id, or None."""
        with self._lock:
            row = self.db.execute("SELECT * FROM users WHERE id = ?", [user_id]).fetchone()
        return _principal("user", row) if row is not None else None

    def users(self) -> list[dict]:
        """Every user, for the users page (no password hashes)."""
        with self._lock:
            rows = self.db.execute("SELECT id, name, role, lines, language, created_at, failures, locked_until "
                                   "FROM users ORDER BY name").fetchall()
        return [{**dict(row), "lines": None if row["lines"] is None else json.loads(row["lines"]),
                 "locked": row["locked_until"] > time.time()} for row in rows]

    def authenticate(self, name: str, password: str) -> Principal:
        """Check a login. Five wrong passwords in a row lock the account for 15 minutes; while
        locked, even the right password is refused. A name that is no account is answered the
        same way, so the answers do not tell which names exist."""
        with self._lock:
            row = self.db.execute("SELECT * FROM users WHERE name = ?", [name]).fetchone()
            unknown_failures = self._unknown.get(name.lower(), 0)
        if row is None:
            _hasher.hash(password)         # the same time whether the user exists or not
            with self._lock:
                self._unknown[name.lower()] = unknown_failures + 1
            if unknown_failures >= MAX_FAILURES:
                raise AccountError(LOCKED)
            raise AccountError("wrong user name or password")
        if row["locked_until"] > time.time():
            raise AccountError(LOCKED)
        # Hashing takes a good part of a second on a Pi: never while holding the lock.
        try:
            _hasher.verify(row["password_hash"], password)
        except (VerificationError, InvalidHashError):
            with self._lock:
                self.db.execute("UPDATE users SET failures = failures + 1, locked_until = CASE WHEN failures + 1 "
                                ">= ? THEN ? ELSE 0 END WHERE id = ?", [MAX_FAILURES, time.time() + LOCKOUT_S, row["id"]])
            raise AccountError("wrong user name or password") from None
        rehash = _hasher.hash(password) if _hasher.check_needs_rehash(row["password_hash"]) else None
        with self._lock:
            self.db.execute("UPDATE users SET failures = 0, locked_until = 0 WHERE id = ?", [row["id"]])
            if rehash is not None:
                self.db.execute("UPDATE users SET password_hash = ? WHERE id = ?", [rehash, row["id"]])
        return _principal("user", row)

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
            _check_password(password)
            sets.append("password_hash = ?")
            params.append(_hasher.hash(password))
        if language is not ...:
            sets.append("language = ?")
            params.append(language)
        if unlock:
            sets.append("failures = 0, locked_until = 0")
        if not sets:
            return
        with self._lock:
            if role is not None and role != "admin" and self._last_admin(user_id):
                raise AccountError("the last admin cannot lose the admin role")
            self.db.execute(f"UPDATE users SET {', '.join(sets)} WHERE id = ?", [*params, user_id])
            if password is not None:
                self.end_sessions(user_id, keep=keep_session)

    def delete_user(self, user_id: int) -> None:
        """Remove a user (never the last admin)."""
        with self._lock:
            if self._last_admin(user_id):
                raise AccountError("the last admin cannot be deleted")
            self.db.execute("DELETE FROM users WHERE id = ?", [user_id])

    # -- sessions ----------------------------------------------------------------------------------------

    def start_session(self, user_id: int, address: str | None, agent: str | None, idle_s: float) -> str:
        """A new session of the user: the token for its cookie (only its digest is kept). Sessions
        unused for `idle_s` are forgotten on the way."""
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            self.db.execute("DELETE FROM sessions WHERE last_seen < ?", [now - idle_s])
            self.db.execute("INSERT INTO sessions (digest, user_id, started_at, last_seen, address, agent) "
                            "VALUES (?, ?, ?, ?, ?, ?)",
                            [token_digest(token), user_id, iso_utc(now), now, address, (agent or "")[:200]])
        return token

    def session_user(self, token: str, idle_s: float) -> Principal | None:
        """The user of a session still open (used within `idle_s`), or None."""
        digest, now = token_digest(token), time.time()
        with self._lock:
            row = self.db.execute("SELECT users.*, sessions.last_seen FROM sessions JOIN users "
                                  "ON users.id = sessions.user_id WHERE digest = ?", [digest]).fetchone()
            if row is None:
                return None
            if row["last_seen"] < now - idle_s:
                self.db.execute("DELETE FROM sessions WHERE digest = ?", [digest])
                return None
            if row["last_seen"] < now - SEEN_EVERY_S:
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


def _check_password(password: str) -> None:
    if len(password or "") < MIN_PASSWORD:
        raise AccountError("a password has at least {n} characters", n=MIN_PASSWORD)
