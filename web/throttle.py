"""Login throttling that slows a password guesser and never locks the owner out for good.

Wrong logins are counted under three keys: the client's address, the name tried from that address,
and the name from anywhere. Past a few free failures each key makes the next try wait, the wait
doubling with each failure up to a cap, and a key quiet for an hour is forgotten. The name-wide key
has a short cap (half a minute) and is skipped for a browser that has logged in to that name before
(a signed device cookie): an attacker elsewhere on the LAN slows the owner down by seconds at most.

A try is counted before its password is hashed, so parallel tries cannot slip past the count, and
the throttle is decided before any hashing, by names alone, so it answers alike for names that are
accounts and names that are not. The counts live in the accounts database: the technician's
`callrec user password` clears them, and a restart does not.
"""

import threading
import time
from dataclasses import dataclass

FORGET_S = 3600


@dataclass(frozen=True)
class Rule:
    """How one key slows down: failures allowed before any wait, and the longest wait."""

    free: int
    cap_s: float

    def wait_s(self, failures: int) -> float:
        """The wait after `failures` failures in a row."""
        if failures <= self.free:
            return 0.0
        return min(self.cap_s, 2.0 ** (failures - self.free - 1))


ADDRESS = Rule(free=10, cap_s=15 * 60)
NAME_FROM_ADDRESS = Rule(free=3, cap_s=15 * 60)
NAME = Rule(free=5, cap_s=30)


class LoginThrottle:
    """The failure counts of one accounts database (thread-safe with the lock given)."""

    def __init__(self, db, lock: threading.RLock):
        self.db, self._lock = db, lock
        with self._lock:
            self.db.execute("CREATE TABLE IF NOT EXISTS throttle (key TEXT PRIMARY KEY, failures INTEGER NOT NULL, "
                            "last REAL NOT NULL)")

    @staticmethod
    def _keys(name: str, address: str, known_device: bool) -> list[tuple[str, Rule]]:
        name = name.lower()
        keys = [(f"address:{address}", ADDRESS), (f"name-from:{name}|{address}", NAME_FROM_ADDRESS)]
        if not known_device:
            keys.append((f"name:{name}", NAME))
        return keys

    def wait_s(self, name: str, address: str, known_device: bool = False) -> float:
        """How long this try must wait before it may be checked (0: check it now)."""
        now = time.time()
        longest = 0.0
        with self._lock:
            for key, rule in self._keys(name, address, known_device):
                row = self.db.execute("SELECT failures, last FROM throttle WHERE key = ?", [key]).fetchone()
                if row is not None and now - row["last"] < FORGET_S:
                    longest = max(longest, row["last"] + rule.wait_s(row["failures"]) - now)
        return longest

    def attempt(self, name: str, address: str) -> None:
        """Count a try about to be checked as a failure (undone by `succeeded`)."""
        now = time.time()
        with self._lock:
            for key, _rule in self._keys(name, address, known_device=False):
                self.db.execute("INSERT INTO throttle (key, failures, last) VALUES (?, 1, ?) ON CONFLICT (key) DO UPDATE "
                                "SET failures = CASE WHEN ? - last >= ? THEN 1 ELSE failures + 1 END, last = excluded.last",
                                [key, now, now, FORGET_S])

    def succeeded(self, name: str, address: str) -> None:
        """The right password: the name's counts start again, and the address's loses this try
        (only this one, or one known account would wipe an attacker's record)."""
        self.clear(name, address)
        with self._lock:
            self.db.execute("UPDATE throttle SET failures = MAX(failures - 1, 0) WHERE key = ?", [f"address:{address}"])

    def clear(self, name: str, address: str | None = None) -> None:
        """Forget the name's failures (from `address`, or from everywhere)."""
        name = name.lower()
        with self._lock:
            self.db.execute("DELETE FROM throttle WHERE key = ?", [f"name:{name}"])
            if address is None:
                self.db.execute("DELETE FROM throttle WHERE key >= ? AND key < ?", [f"name-from:{name}|", f"name-from:{name}}}"])
            else:
                self.db.execute("DELETE FROM throttle WHERE key = ?", [f"name-from:{name}|{address}"])

    def slowed_names(self) -> dict[str, float]:
        """Names whose next try must wait now, with the time it may come (for the users page)."""
        now = time.time()
        with self._lock:
            rows = self.db.execute("SELECT key, failures, last FROM throttle WHERE key LIKE 'name:%'").fetchall()
        found = {}
        for row in rows:
            until = row["last"] + NAME.wait_s(row["failures"])
            if until > now and now - row["last"] < FORGET_S:
                found[row["key"][len("name:"):]] = until
        return found
