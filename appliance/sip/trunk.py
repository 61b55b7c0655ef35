"""One SIP trunk in the recorder: its relay runs on an asyncio event loop in a thread of its own
(SIP, RTP and timers, never blocking), its store work on the line's store thread.
"""

import asyncio
import logging
import threading
import time

from appliance.store.callrow import Desk
from appliance.clock import iso_from_mono
from appliance.config import SipTrunkConfig
from appliance.control import refused
from appliance.errors import HardwareError
from appliance.sip.line import SipLine
from appliance.sip.proxy import Proxy

log = logging.getLogger(__name__)

BEAT_S = 1.0
PROBLEM_STALE_S = 10.0      # a heartbeat this old is a stuck relay, for the live state
CONTROL_S = 2.0             # the loop answers the control channel within this
LISTEN_PERIOD_S = 0.02      # about how much audio a tick hands on (for a listener's queue)
NETWORK = ("trunk", "pbx", "rtp_port_min", "rtp_port_max")     # these change only at a restart


async def _run(job):
    return job()


class SipTrunk:
    """Relays and records one configured SIP trunk."""

    def __init__(self, config: SipTrunkConfig, desk: Desk, listeners: int = 2):
        self.config = config
        self.listeners = listeners          # live listeners of one call at most
        self.loop = asyncio.new_event_loop()
        self.line = SipLine(config, desk, self._call_later)
        self.proxy: Proxy | None = None
        self._ready = threading.Event()
        self.heartbeat = time.monotonic()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name=f"sip-{config.name}", daemon=True)

    def _call_later(self, delay: float, callback, *args):
        return self.loop.call_later(delay, callback, *args)

    def start(self) -> None:
        """Listen on both sides and relay. Raises HardwareError when an address cannot be used."""
        self.line.start()
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self.line.stop()
            raise HardwareError(f"sip_trunk {self.config.name!r}: cannot listen on "
                                f"{self.config.trunk.listen} and {self.config.pbx.listen}: {self._error}")
        log.info("sip trunk %s: relaying %s (operator %s) and %s (PBX %s)", self.config.name,
                 self.config.trunk.listen, self.config.trunk.peer, self.config.pbx.listen,
                 self.config.pbx.peer or "phones that register")

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.proxy = Proxy(self.loop, self.config, self.line)
            self.proxy.start()
        except OSError as exc:
            self._error = exc
            self._ready.set()
            self.loop.close()
            return
        self._ready.set()
        self._beat()
        self.loop.run_forever()
        # A DNS lookup still waiting (on a server gone away) ends here, not in a closed loop.
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    def _beat(self) -> None:
        """The loop's heartbeat: a timer that only runs while the loop does its work in time."""
        self.heartbeat = time.monotonic()
        self.loop.call_later(BEAT_S, self._beat)

    def problem(self, stale_s: float) -> str | None:
        """Why this trunk is not well (its relay's loop or store thread ended or stuck), or None."""
        if self.proxy is None:
            return None
        if not self._thread.is_alive():
            return f"sip trunk {self.config.name}: its relay ended"
        if time.monotonic() - self.heartbeat > max(stale_s, 2 * BEAT_S):
            return f"sip trunk {self.config.name}: its relay's loop made no progress for {stale_s:.0f} s"
        problem = self.line.worker.problem(stale_s)
        return problem and f"sip trunk {self.config.name}: {problem}"

    def peer_problems(self) -> list[str]:
        """The peers of this trunk that stopped answering its pings (not the recorder's fault: no
        restart helps, the technician does)."""
        proxy = self.proxy
        return [] if proxy is None else proxy.peers.problems()

    def stop(self) -> None:
        """Stop relaying; calls in progress are finalised as interrupted."""
        if self.proxy is None:
            return

        def shut_down():
            self.proxy.close()
            self.loop.stop()
        self.loop.call_soon_threadsafe(shut_down)
        self._thread.join()
        self.line.stop()

    def _on_loop(self, job):
        """Run `job` on the relay's loop and return what it returns (or raise what it raises)."""
        try:
            return asyncio.run_coroutine_threadsafe(_run(job), self.loop).result(timeout=CONTROL_S)
        except TimeoutError:
            raise refused(f"sip trunk {self.config.name}", "no-answer") from None

    def screen_pause(self, pause: bool, by: str, call_id: int | None) -> dict:
        """The screen's pause or resume of a call in progress (see SipLine.screen_pause)."""
        return self._on_loop(lambda: self.line.screen_pause(pause, by, call_id))

    def listen(self, by: str, call_id: int | None, queue_s: float):
        """A live listener of a call in progress (see SipLine.listen)."""
        periods = int(queue_s / LISTEN_PERIOD_S)
        return self._on_loop(lambda: self.line.listen(by, call_id, self.listeners, periods))

    def apply(self, config: SipTrunkConfig) -> bool:
        """Take up new call rules (notice, purpose, opt-out, pause, RTP timeout) from the next call.
        The addresses and RTP ports stay until a restart: returns False when they changed."""
        network = {name: getattr(self.config, name) for name in NETWORK}
        kept = config.model_copy(update=network)
        self.line.apply(kept)
        if self.proxy is not None:
            self.proxy.config = kept
        self.config = kept
        return all(getattr(config, name) == value for name, value in network.items())

    def snapshot(self) -> dict:
        """This trunk's live state for the web UI: idle, ringing or in a call (the first of its
        calls named, with how many there are)."""
        active = [call for call in list(self.line.active) if not call.ended]
        ringing = self.proxy is not None and any(d.state == "calling" for d in list(self.proxy.dialogs.values()))
        first = active[0] if active else None
        problem = self.problem(PROBLEM_STALE_S) if self.proxy is not None else "not relaying"
        state = ("paused" if first.rules.paused else "in_call") if first else "ringing" if ringing else "idle"
        return {"name": self.config.name, "state": state,
                "hook": None, "calls": len(active), "call_id": first.call_id if first else None,
                "call_started_at": iso_from_mono(first.facts.answered) if first else None,
                "direction": first.facts.direction if first else None, "number": first.facts.number if first else None,
                **self.levels(), "capture_connected": problem is None, "problem": problem, "modem_connected": None,
                "peer_problem": "; ".join(self.peer_problems()) or None}

    def levels(self) -> dict:
        """The input levels since the last reading: each side's (caller, callee), and the louder."""
        sides = [dict(meter.read(), side=side) for meter, side in zip(self.line.meters, ("caller", "callee"))]
        heard = [side for side in sides if side["level_dbfs"] is not None]
        loudest = max(heard, key=lambda side: side["level_dbfs"], default=sides[0])
        return {"level_dbfs": loudest["level_dbfs"], "peak_dbfs": max((s["peak_dbfs"] for s in heard), default=None),
                "clipping": any(s["clipping"] for s in sides), "channels": sides}

    @property
    def idle(self) -> bool:
        """No call ringing or in progress, nothing queued for the store."""
        return self.proxy is not None and not self.proxy.busy and self.line.idle
