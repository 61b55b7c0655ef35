"""The appliance's own requests (the BYEs that end a dead call, the OPTIONS that keep a peer's
NAT binding open) as RFC 3261 non-INVITE client transactions (17.1.2): over UDP a request is sent
again after T1, then at intervals doubling up to T2 (every T2 once a provisional answer came), until
a final answer or Timer F (or a shorter wait the request sets); over TCP it is sent once. A request
that gets no final answer is given up with a warning, or told to whoever sent it.
"""

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

T1_S = 0.5                  # the round-trip estimate (RFC 3261 17.1.1.1)
T2_S = 4.0                  # the longest interval between retransmissions
TIMER_F_S = 64 * T1_S       # how long a request waits for its final answer


@dataclass
class Transaction:
    """One request waiting for its final answer."""

    send: Callable[[], None]
    what: str                               # for the log: which request to whom
    interval: float
    due: float                              # when it is sent again (loop time)
    timer_e: asyncio.TimerHandle | None = None    # the next retransmission
    timer_f: asyncio.TimerHandle | None = None    # the end of waiting
    on_final: Callable[[int | None], None] | None = None    # told the final status (None: no answer)


class ClientTransactions:
    """The appliance's requests waiting for a final answer, by the branch of their Via (on the
    loop's thread)."""

    def __init__(self, loop, name: str):
        self.loop = loop
        self.name = name
        self.pending: dict[str, Transaction] = {}

    def start(self, branch: str, send: Callable[[], None], reliable: bool, what: str,
              on_final: Callable[[int | None], None] | None = None, wait_s: float | None = None) -> None:
        """Send a request with `send()`, and again until it is answered unless `reliable` (TCP).
        With `on_final`, its final status (or None after `wait_s` without one) goes there instead
        of a warning to the log. It waits for it `wait_s`, or Timer F."""
        send()
        now = self.loop.time()
        transaction = Transaction(send, what, T1_S, now + T1_S, on_final=on_final)
        transaction.timer_f = self.loop.call_at(now + (TIMER_F_S if wait_s is None else wait_s), self._give_up, branch)
        if not reliable:
            transaction.timer_e = self.loop.call_at(transaction.due, self._retransmit, branch)
        self.pending[branch] = transaction

    def answered(self, branch: str, status: int) -> None:
        """A response to one of the appliance's requests: a final one ends its transaction, a
        provisional one slows its retransmissions to every T2."""
        transaction = self.pending.get(branch)
        if transaction is None:
            return                          # a late or repeated answer
        if status >= 200:
            self._finish(branch)
            if transaction.on_final is not None:
                transaction.on_final(status)
        else:
            transaction.interval = T2_S

    def close(self) -> None:
        """Stop every timer; what is pending is not sent again."""
        for branch in list(self.pending):
            self._finish(branch)

    def _retransmit(self, branch: str) -> None:
        transaction = self.pending[branch]
        transaction.send()
        transaction.interval = min(2 * transaction.interval, T2_S)
        # From when it was due, not when it ran: a busy loop does not stretch the schedule.
        transaction.due += transaction.interval
        transaction.timer_e = self.loop.call_at(transaction.due, self._retransmit, branch)

    def _give_up(self, branch: str) -> None:
        transaction = self.pending[branch]
        self._finish(branch)
        if transaction.on_final is not None:
            transaction.on_final(None)
        else:
            log.warning("sip trunk %s: %s got no final answer in %g s; given up", self.name, transaction.what, TIMER_F_S)

    def _finish(self, branch: str) -> None:
        transaction = self.pending.pop(branch)
        for timer in (transaction.timer_e, transaction.timer_f):
            if timer is not None:
                timer.cancel()
