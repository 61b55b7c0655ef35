"""The recorder: every analog line and SIP trunk, their shared catalogue, finaliser, cleaner,
offloader, webhook, live state and watchdog.
"""

import logging
import sqlite3
import sys
import time
from pathlib import Path

from appliance.advice import config_advice
from appliance.alarms import RECORDER_DOWN, TITLES, AlarmNotifier, offload_condition, storage_conditions
from appliance.analog.line import LineRecorder
from appliance.clock import clock_synchronised
from appliance.config import Config
from appliance.contacts import lookup
from appliance.control import ControlService
from appliance.errors import CallrecError
from appliance.faultled import MODEM_LOST, NO_SOUND_CARD, STORAGE_ALARM, TRUNK_DOWN, FaultLed
from appliance.keys import ensure_device_key_apart
from appliance.live import LivePublisher
from appliance.offload import Offloader
from appliance.sdnotify import Watchdog, notify
from appliance.service import Service, Worker, settled
from appliance.store.archive import SPOOL_DIR, recover
from appliance.store.callrow import CallRow, Desk
from appliance.store.catalogue import Catalogue
from appliance.store.objections import Objections
from appliance.store.reserve import Reserve
from appliance.store.retention import Store
from appliance.store.sealing import Sealer
from appliance.store.writer import CatalogueWriter
from appliance.webhook import Webhook, call_event

log = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.001
TRUNK_STALE_S = 10.0    # a trunk's heartbeat this old lights the fault LED
DRAIN_REFUSED_S = 10.0  # at a stop, how long ended calls wait for a catalogue that refuses writes


class Cleaner(Service):
    """Runs the store's cleaner at start and then every `interval` seconds."""

    def __init__(self, store: Store, interval: float):
        super().__init__("cleaner")
        self.store = store
        self.interval = interval

    def serve(self) -> None:
        while True:
            try:
                self.store.clean()
            except sqlite3.OperationalError as exc:
                if "full" in str(exc) and self.store.reserve is not None and self.store.reserve.release():
                    continue            # its deletions have room now: at once
                log.exception("cleaner pass failed")
            except Exception:
                # Cleaning must never stop recording; the next pass tries again.
                log.exception("cleaner pass failed")
            if self.wait(self.interval):
                return


class Recorder:
    """All configured lines, their shared catalogue, finaliser and cleaner."""

    def __init__(self, config: Config, pin_factory=None):
        self.config = config
        data_dir = Path(config.recorder.data_dir)
        (data_dir / SPOOL_DIR).mkdir(parents=True, exist_ok=True)
        ensure_device_key_apart(data_dir)
        self.catalogue = Catalogue(data_dir)
        purposes = {line.name: line.purpose for line in [*config.line, *config.sip_trunk]}
        self.reserve = Reserve(data_dir, config.store.reserve_mb * 1_000_000)
        self.store = Store.configured(self.catalogue, data_dir, config, self.reserve)
        sealer = Sealer.load(data_dir)     # once: None for a store that is not sealed
        self.recovered = recover(self.catalogue, data_dir, config.recorder.format,
                                 config.recorder.opus_bitrate, purposes, self.store.legal_facts, sealer)
        self.cleaner = Cleaner(self.store, config.store.cleaner_interval_s)
        self.reserve.on_release = self.cleaner.wake        # to make room at once
        self.objections = Objections(self.catalogue, data_dir, config.recorder.country_code)
        self.objections.refresh()           # before the first call: its thread reloads it from then on
        self.writer = CatalogueWriter(on_full=self.reserve.release)
        self.finaliser = Worker("finaliser")      # encodes ended calls, off every line's thread
        self.desk = Desk(self.catalogue, self.writer, self.finaliser, data_dir, config.recorder.format,
                         config.recorder.opus_bitrate, config.recorder.flush_interval_s, self._finished,
                         self.reserve, self.objections, self.store.legal_facts, sealer)
        self.lines = [LineRecorder(line, config.recorder, self.desk, pin_factory, on_agreement=self._mark_agreement)
                      for line in config.line]
        self.trunks = []
        if config.sip_trunk:
            # Only a box with a trunk loads the SIP relay (DNS, TLS, SRTP: about 15 MB of the recorder).
            from appliance.sip.trunk import SipTrunk
            self.trunks = [SipTrunk(trunk, self.desk, config.recorder.listeners_per_line) for trunk in config.sip_trunk]
        self.control = ControlService(config.recorder.live_dir, {**{line.line.name: line for line in self.lines},
                                                                 **{trunk.config.name: trunk for trunk in self.trunks}})
        self.webhook = None
        if config.webhook is not None:
            secret = config.webhook.secret_file.read_text().strip()
            self.webhook = Webhook(config.webhook.url, secret, self.catalogue)
        self.offload = (Offloader(config.offload, self.catalogue, data_dir, config.recorder.live_dir)
                        if config.offload is not None else None)
        pin = config.recorder.fault_led_pin
        self.fault_led = FaultLed(pin, self.faults, pin_factory) if pin is not None else None
        self.alarms = self._alarm_notifier(config) if config.alarms is not None else None
        self.live = LivePublisher(config.recorder.live_dir,
                                  lambda: [line.snapshot() for line in [*self.lines, *self.trunks]],
                                  self.store.reserve_alarm)
        self.watchdog = Watchdog(self.problem)

    def reload(self, config: Config) -> list[str]:
        """Take up a changed configuration without stopping: purposes, store limits and each line's
        and trunk's call settings apply at once. Returns what waits for a restart (wiring, addresses,
        lines or trunks added or removed)."""
        self.store.purposes, self.store.settings = config.purpose, config.store
        self.store.tell_webhook = config.webhook is not None
        self.cleaner.interval = config.store.cleaner_interval_s
        self._reload_alarms(config)
        running = {line.line.name: line for line in self.lines}
        pending = [f"line {name} added" for name in {line.name for line in config.line} - set(running)]
        pending += [f"line {name} removed" for name in set(running) - {line.name for line in config.line}]
        for line in config.line:
            if line.name in running and not running[line.name].apply(line):
                pending.append(f"line {line.name}: its pins, sound card or modem")
        trunks = {trunk.config.name: trunk for trunk in self.trunks}
        wanted = {trunk.name: trunk for trunk in config.sip_trunk}
        pending += [f"sip trunk {name} added" for name in sorted(set(wanted) - set(trunks))]
        pending += [f"sip trunk {name} removed" for name in sorted(set(trunks) - set(wanted))]
        for name in sorted(set(trunks) & set(wanted)):
            if not trunks[name].apply(wanted[name]):
                pending.append(f"sip trunk {name}: its addresses or RTP ports")
        return pending

    def _alarm_notifier(self, config: Config) -> AlarmNotifier:
        """The thread that sends alarms (all but the recorder down, which the web UI tells)."""
        return AlarmNotifier(config.alarms, self.catalogue, self.alarm_conditions, set(TITLES) - {RECORDER_DOWN},
                             config.web, self.webhook.send if self.webhook is not None else None)

    def _reload_alarms(self, config: Config) -> None:
        """Alarms set, changed or removed on the settings page apply at once."""
        if config.alarms is not None and self.alarms is not None:
            self.alarms.settings = config.alarms
        elif config.alarms is not None:
            self.alarms = self._alarm_notifier(config)
            if self.cleaner.ident is not None:          # started already
                self.alarms.start()
        elif self.alarms is not None:
            alarms, self.alarms = self.alarms, None
            alarms.stop(timeout=alarms.beat_s)

    def faults(self) -> set[int]:
        """What the fault LED shows: a missing sound card, the storage alarm, a lost modem, a SIP
        trunk whose relay is down or stuck or whose peer does not answer."""
        present = set()
        if any(not line.capture.connected.is_set() for line in self.lines):
            present.add(NO_SOUND_CARD)
        if self.store.alarm() is not None or not self.reserve.held:
            present.add(STORAGE_ALARM)
        if any(line.modem is not None and not line.modem.connected.is_set() for line in self.lines):
            present.add(MODEM_LOST)
        if any(trunk.problem(TRUNK_STALE_S) is not None or trunk.peer_problems() for trunk in self.trunks):
            present.add(TRUNK_DOWN)
        return present

    def alarm_conditions(self) -> dict[str, str]:
        """The alarms present now, by name (see appliance.alarms): the store's, the fault LED's
        faults, a dead or stuck service, the clock, an offload backlog."""
        found = storage_conditions(self.store)
        cards = [f"{line.line.name} ({line.capture.device})" for line in self.lines
                 if not line.capture.connected.is_set()]
        if cards:
            found["sound_card"] = (f"no sound card on line {', '.join(cards)}: calls there are not recorded; it is "
                                   f"tried again by itself: check its USB cable")
        modems = [f"{line.line.name} ({line.line.modem})" for line in self.lines
                  if line.modem is not None and not line.modem.connected.is_set()]
        if modems:
            found["modem"] = (f"the caller-ID modem of line {', '.join(modems)} does not answer: calls are recorded "
                              f"without the caller's number; check its USB cable")
        trunks = [problem for trunk in self.trunks if (problem := trunk.problem(TRUNK_STALE_S)) is not None]
        if trunks:
            found["sip_trunk"] = "; ".join(trunks)
        peers = [problem for trunk in self.trunks for problem in trunk.peer_problems()]
        if peers:
            found["sip_peer"] = "; ".join(peers)
        if (problem := self.problem(TRUNK_STALE_S)) is not None:
            found["service"] = f"{problem}: the watchdog restarts the recorder"
        if not clock_synchronised():
            found["clock"] = ("the system clock is not synchronised: calls are time-stamped with a clock that may be "
                              "wrong (each call says so); check the network and the NTP server")
        if self.offload is not None and (alarms := self.alarms) is not None:
            found.update(offload_condition(self.catalogue, alarms.settings, self.offload.target.name))
        return found

    def problem(self, stall_s: float) -> str | None:
        """Why the recorder needs a restart, for the watchdog: a line whose capture thread died, or
        that has its sound card open but got no audio from it for `stall_s`; a service (catalogue
        writer, finaliser, cleaner, the do-not-record list, a trunk's relay or store thread, the webhook, the offloader, the
        live state) dead or stuck. A missing card is not one: capture retries it by itself, and the
        fault LED shows it."""
        now = time.monotonic()
        for line in self.lines:
            capture = line.capture
            if not capture.is_alive():
                return f"line {line.line.name}: capture thread ended"
            since = max(capture.last_read or 0.0, capture.opened_at or 0.0)
            if capture.connected.is_set() and now - since > stall_s:
                return f"line {line.line.name}: no audio from {capture.device} for {now - since:.0f} s"
        for service in (self.writer, self.finaliser, self.cleaner, self.objections, *self.trunks, self.webhook,
                        self.offload, self.live, self.alarms, self.control):
            if service is not None and (problem := service.problem(stall_s)) is not None:
                return problem
        return None

    def _finished(self, row: dict) -> None:
        """A call is in the archive (or missed): name its caller from the contacts, tell the CRM,
        wake the offloader. A sealed store's recorder cannot read the contacts: the web names
        the caller when it shows the call."""
        if row["number"] and self.catalogue.db.sealer is None:
            with self.catalogue.read() as db:
                contact = lookup(db, row["number"], self.config.recorder.country_code)
            if contact is not None:
                self.catalogue.set_contact_name(row["id"], contact.name)
                row = {**row, "contact_name": contact.name}
        if self.webhook is not None:
            self.webhook.send(call_event(row))
        if self.offload is not None:
            self.offload.notify()

    def _mark_agreement(self, row: CallRow, actor: str) -> None:
        """The agreement button: keep this call as the evidence of an agreement (once its row is
        written)."""
        def step():
            try:
                self.store.classify(row.id, "agreement", actor)
                log.info("call %s marked as an agreement by %s", row.id, actor)
            except CallrecError as exc:
                log.error("cannot mark call %s as an agreement: %s", row.id, exc)
        self.writer.submit(step)

    def start(self) -> None:
        """Start every line, then the cleaner."""
        # A thread that waits for I/O (a spool writer, the relay's loop) gets the interpreter back
        # within a millisecond of a busy one (a key detector on a burst of pre-roll), not five.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        for advice in config_advice(self.config):
            log.warning("%s", advice)
        self.writer.start()
        self.finaliser.start()
        for line in self.lines:
            line.start()
        for trunk in self.trunks:
            trunk.start()
        self.cleaner.start()
        self.objections.start()
        self.live.start()
        self.control.start()
        if self.fault_led is not None:
            self.fault_led.start()
        if self.webhook is not None:
            self.webhook.start()
        if self.offload is not None:
            self.offload.start()        # its first pass catches up with what is waiting
        if self.alarms is not None:
            self.alarms.start()         # after the webhook: its first events go out at once
        self.watchdog.start()

    def idle(self) -> bool:
        """No call in progress on any line and nothing left to finalise."""
        # The lines first: what a line hands on before it is idle is then seen by `settled`.
        return all(line.idle for line in [*self.lines, *self.trunks]) and settled(self._workers())

    def _workers(self) -> list[Worker]:
        """The workers that hand a call's jobs to one another: the trunks' store threads, the
        catalogue writer and the finaliser."""
        return [*(trunk.line.worker for trunk in self.trunks), self.writer, self.finaliser]

    def _drain(self) -> None:
        """Let the writer and the finaliser finish the calls ended (each hands work to the other),
        unless the catalogue keeps refusing writes: what is left then is recovered at the next start."""
        while not settled([self.writer, self.finaliser]):
            if not (self.writer.is_alive() and self.finaliser.is_alive()):
                break           # one of them died: what is left is recovered at the next start
            refusing = self.writer.refusing_since
            if refusing is not None and time.monotonic() - refusing > DRAIN_REFUSED_S:
                break
            time.sleep(0.02)
        self.finaliser.close()
        self.writer.close(timeout=DRAIN_REFUSED_S)

    def stop(self) -> None:
        """Stop all lines, finalise what was in progress, close the catalogue."""
        notify("STOPPING=1")
        self.watchdog.close()
        self.cleaner.stopping.set()
        self.objections.stop()
        self.live.stop()
        self.control.stop()
        if self.fault_led is not None:
            self.fault_led.close()
        for line in [*self.lines, *self.trunks]:
            line.stop()
        self._drain()
        if self.alarms is not None:
            self.alarms.stop(timeout=self.alarms.beat_s)      # a mail being sent is let finish
        if self.webhook is not None:
            self.webhook.stop(timeout=5)
        if self.offload is not None:
            self.offload.stop(timeout=5)
        if self.cleaner.is_alive():
            self.cleaner.join()
        self.catalogue.close()
