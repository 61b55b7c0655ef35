"""The recorder: every analog line and SIP trunk, their shared catalogue, finaliser, cleaner,
offloader, webhook, live state and watchdog.
"""

import logging
import queue
import threading
import time
from pathlib import Path

from appliance.analog.line import LineRecorder
from appliance.config import Config
from appliance.contacts import lookup
from appliance.errors import CallrecError
from appliance.faultled import MODEM_LOST, NO_SOUND_CARD, STORAGE_ALARM, FaultLed
from appliance.keys import ensure_device_key_apart
from appliance.live import LivePublisher
from appliance.offload import Offloader
from appliance.sdnotify import Watchdog, notify
from appliance.sip.trunk import SipTrunk
from appliance.store.archive import SPOOL_DIR, recover
from appliance.store.catalogue import Catalogue
from appliance.store.retention import Store
from appliance.webhook import Webhook, call_event

log = logging.getLogger(__name__)


class Finaliser(threading.Thread):
    """Runs finalisation jobs one at a time, so encoding never holds up a line."""

    def __init__(self):
        super().__init__(name="finaliser", daemon=True)
        self.jobs: "queue.Queue" = queue.Queue()

    def submit(self, job) -> None:
        """Queue a callable."""
        self.jobs.put(job)

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                job()
            except Exception:
                # A failed job leaves its spool in place: it is recovered at the next start.
                log.exception("finalising a call failed")
            finally:
                self.jobs.task_done()
        self.jobs.task_done()

    def wait_idle(self) -> None:
        """Block until every queued job has run."""
        self.jobs.join()

    def close(self) -> None:
        """Run what is queued, then end the thread."""
        self.jobs.put(None)
        self.join()


class Cleaner(threading.Thread):
    """Runs the store's cleaner at start and then every `interval` seconds."""

    def __init__(self, store: Store, interval: float):
        super().__init__(name="cleaner", daemon=True)
        self.store = store
        self.interval = interval
        self.stopping = threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.store.clean()
            except Exception:
                # Cleaning must never stop recording; the next pass tries again.
                log.exception("cleaner pass failed")
            if self.stopping.wait(self.interval):
                return


class Recorder:
    """All configured lines, their shared catalogue, finaliser and cleaner."""

    def __init__(self, config: Config, pin_factory=None):
        self.config = config
        data_dir = Path(config.recorder.data_dir)
        (data_dir / SPOOL_DIR).mkdir(parents=True, exist_ok=True)
        ensure_device_key_apart(data_dir)
        self.catalogue = Catalogue(data_dir)
        self.recovered = recover(self.catalogue, data_dir, config.recorder.format,
                                 config.recorder.opus_bitrate)
        self.store = Store(self.catalogue, data_dir, config.purpose, config.store, len(config.line_names))
        self.cleaner = Cleaner(self.store, config.store.cleaner_interval_s)
        self.finaliser = Finaliser()
        self.lines = [LineRecorder(line, config.recorder, self.catalogue, self.finaliser, pin_factory,
                                   on_agreement=self._mark_agreement, on_finished=self._finished)
                      for line in config.line]
        self.trunks = [SipTrunk(trunk, config.recorder, self.catalogue, self.finaliser, self._finished)
                       for trunk in config.sip_trunk]
        self.webhook = None
        if config.webhook is not None:
            secret = config.webhook.secret_file.read_text().strip()
            self.webhook = Webhook(config.webhook.url, secret)
        self.offload = Offloader(config.offload, self.catalogue, data_dir) if config.offload is not None else None
        pin = config.recorder.fault_led_pin
        self.fault_led = FaultLed(pin, self.faults, pin_factory) if pin is not None else None
        self.live = LivePublisher(config.recorder.live_dir,
                                  lambda: [line.snapshot() for line in [*self.lines, *self.trunks]])
        self.watchdog = Watchdog(self.capture_problem)

    def reload(self, config: Config) -> list[str]:
        """Take up a changed configuration without stopping: purposes, store limits and each line's
        and trunk's call settings apply at once. Returns what waits for a restart (wiring, addresses,
        lines or trunks added or removed)."""
        self.store.purposes, self.store.settings = config.purpose, config.store
        self.cleaner.interval = config.store.cleaner_interval_s
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

    def faults(self) -> set[int]:
        """What the fault LED shows: a missing sound card, the storage alarm, a lost modem."""
        present = set()
        if any(not line.capture.connected.is_set() for line in self.lines):
            present.add(NO_SOUND_CARD)
        if self.store.alarm() is not None:
            present.add(STORAGE_ALARM)
        if any(line.modem is not None and not line.modem.connected.is_set() for line in self.lines):
            present.add(MODEM_LOST)
        return present

    def capture_problem(self, stall_s: float) -> str | None:
        """Why the recorder needs a restart, for the watchdog: a line whose capture thread died, or
        that has its sound card open but got no audio from it for `stall_s`. A missing card is not
        one: capture retries it by itself, and the fault LED shows it."""
        now = time.monotonic()
        for line in self.lines:
            capture = line.capture
            if not capture.is_alive():
                return f"line {line.line.name}: capture thread ended"
            since = max(capture.last_read or 0.0, capture.opened_at or 0.0)
            if capture.connected.is_set() and now - since > stall_s:
                return f"line {line.line.name}: no audio from {capture.device} for {now - since:.0f} s"
        return None

    def _finished(self, row: dict) -> None:
        """A call is in the archive (or missed): name its caller from the contacts, tell the CRM,
        wake the offloader."""
        if row["number"]:
            with self.catalogue.transaction() as db:
                contact = lookup(db, row["number"], self.config.recorder.country_code)
                if contact is not None:
                    db.execute("UPDATE calls SET contact_name = ? WHERE id = ?", [contact.name, row["id"]])
                    row = {**row, "contact_name": contact.name}
        if self.webhook is not None:
            self.webhook.send(call_event(row))
        if self.offload is not None:
            self.offload.notify()

    def _mark_agreement(self, call_id: int, actor: str) -> None:
        """The agreement button: keep this call as the evidence of an agreement."""
        try:
            self.store.classify(call_id, "agreement", actor)
            log.info("call %s marked as an agreement by %s", call_id, actor)
        except CallrecError as exc:
            log.error("cannot mark call %s as an agreement: %s", call_id, exc)

    def start(self) -> None:
        """Start every line, then the cleaner."""
        self.finaliser.start()
        for line in self.lines:
            line.start()
        for trunk in self.trunks:
            trunk.start()
        self.cleaner.start()
        self.live.start()
        if self.fault_led is not None:
            self.fault_led.start()
        if self.webhook is not None:
            self.webhook.start()
        if self.offload is not None:
            self.offload.start()        # its first pass catches up with what is waiting
        self.watchdog.start()

    def idle(self) -> bool:
        """No call in progress on any line and nothing left to finalise."""
        return (all(line.idle for line in [*self.lines, *self.trunks])
                and self.finaliser.jobs.unfinished_tasks == 0)

    def stop(self) -> None:
        """Stop all lines, finalise what was in progress, close the catalogue."""
        notify("STOPPING=1")
        self.watchdog.close()
        self.cleaner.stopping.set()
        self.live.stop()
        if self.fault_led is not None:
            self.fault_led.close()
        for line in [*self.lines, *self.trunks]:
            line.stop()
        self.finaliser.close()
        if self.webhook is not None:
            self.webhook.stop(timeout=5)
        if self.offload is not None:
            self.offload.stop(timeout=5)
        if self.cleaner.is_alive():
            self.cleaner.join()
        self.catalogue.close()
