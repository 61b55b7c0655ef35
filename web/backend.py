"""What the web process holds of the appliance: the configuration, the catalogue and store it
shares with the recorder, the accounts, and the way to tell the recorder to reload.

The web UI never touches the hardware; the recorder keeps recording whatever happens here.
"""

import logging
import os
import signal
import threading
import time
from pathlib import Path

from flask import current_app

from appliance.alarms import RECORDER_DOWN, AlarmNotifier, RecorderWatch, episodes
from appliance.store.catalogue import Catalogue
from appliance.store.directory import Directory
from appliance.webhook import add_to_outbox
from appliance.config import Config, load_config
from appliance.clock import iso_utc
from appliance.live import read_live, recorder_pid
from appliance.store.objections import Objections
from appliance.store.personal import NumberTagger
from appliance.store.retention import Store
from appliance.store.sealing import Opener, Sealer, StoreLocked
from appliance.signer import DeviceSigner, SignerError
from web.accounts import Accounts

log = logging.getLogger(__name__)



class Backend:
    """The appliance as the web UI sees it."""

    def __init__(self, config_path: Path):
        self.config_path = Path(config_path)
        self._lock = threading.Lock()
        self.config: Config = load_config(self.config_path)
        self.data_dir = Path(self.config.recorder.data_dir)
        self.catalogue = Catalogue(self.data_dir)
        # The ledger is the recorder's user's to write: under install.sh's units, the signer's.
        self.catalogue.ledger_writer = lambda: self.signer.write_ledger()
        self.store = self._store(self.config)
        # Changes only (the recorder reads the list itself): its refreshing thread is not started here.
        self.objections = Objections(self.catalogue, self.data_dir, self.config.recorder.country_code)
        self.accounts = Accounts(self.data_dir / "web")
        self.exports_dir = self.data_dir / "web" / "exports"
        self.exports_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.watch: AlarmNotifier | None = None     # the recorder's, in the web server
        self._watching = False
        self.sealer = Sealer.load(self.data_dir)    # None: the store is not sealed
        self.opener: Opener | None = None           # in RAM only, from the first login on
        self.secret: bytes | None = None            # with it: what a new user's key slot wraps
        self.locked_since = iso_utc(time.time())
        self.tagger: NumberTagger | None = None     # tags the recorder's new calls once unlocked

    def _store(self, config: Config) -> Store:
        return Store.configured(self.catalogue, self.data_dir, config)

    def reload(self) -> None:
        """Take up a changed configuration file (after the settings pages wrote it)."""
        with self._lock:
            self.config = load_config(self.config_path)
            self.store = self._store(self.config)
        if self._watching:
            self.watch_recorder()

    @property
    def directory(self) -> Directory:
        """The contacts directory, numbers read with the configured country code (StoreLocked:
        a sealed store's contacts cannot be read yet)."""
        return Directory(self.catalogue, self.config.recorder.country_code, self.reading())

    @property
    def locked(self) -> bool:
        """True while a sealed store cannot be read (no one has logged in since start-up)."""
        return self.sealer is not None and self.opener is None

    def unlock(self, secret: bytes) -> None:
        """Keep the store secret's opener in RAM: sealed recordings and fields can be read, the
        calls written while locked are tagged (found by number) from now on, and the signer gets
        the secret, which opens the sealed device key."""
        self.opener = Opener(secret)
        self.secret = secret
        with self._lock:
            if self.tagger is None:
                self.tagger = NumberTagger(self.catalogue, self.opener, self.config.recorder.country_code)
                self.tagger.start()
        if self.sealer is not None:
            try:
                self.signer.unlock(secret)
            except SignerError as exc:      # the login stands: signing waits until the signer runs
                log.warning("the signer did not take the store secret: %s", exc)

    @property
    def signer(self) -> DeviceSigner:
        """How the web UI signs: only through the signer (which alone may read the device key)."""
        return DeviceSigner(self.config.recorder.live_dir, self.data_dir,
                            unlocker=lambda: self.secret if self.sealer is not None else None)

    def reading(self) -> Opener | None:
        """What opens sealed data: None for a store that is not sealed; StoreLocked while locked."""
        if self.locked:
            raise StoreLocked()
        return self.opener

    def live(self) -> dict | None:
        """The recorder's live state, or None when it is not running."""
        return read_live(self.config.recorder.live_dir)

    def signal_recorder(self) -> bool:
        """Ask the running recorder to reload its configuration (SIGHUP, or through its control
        channel where it runs as another user). False if none runs."""
        pid = recorder_pid(self.config.recorder.live_dir)
        if pid is None:
            return False
        try:
            os.kill(pid, signal.SIGHUP)
            return True
        except PermissionError:
            from web.live import ControlRefused, ask

            try:
                ask(self.config.recorder.live_dir, {"command": "reload", "by": "web"})[1].close()
                return True
            except ControlRefused as exc:
                log.warning("cannot ask the recorder to reload: %s", exc)
                return False
        except OSError as exc:
            log.warning("cannot signal the recorder (pid %s): %s", pid, exc)
            return False

    def watch_recorder(self) -> None:
        """Tell, by e-mail and webhook, when the recorder is down (it cannot say so itself), from a
        thread of the web server's, now and whenever an `[alarms]` table is set."""
        self._watching = True
        if self.watch is None and self.config.alarms is not None:
            self.watch = self.make_recorder_watch()
            self.watch.start()

    def make_recorder_watch(self) -> AlarmNotifier:
        """The thread that watches the recorder (not started), following the settings pages."""
        recorder = RecorderWatch()

        def conditions() -> dict[str, str]:
            if self.config.alarms is None:
                return {}           # alarms turned off: the episode ends
            watch.settings = self.config.alarms
            kept = episodes(self.catalogue).get(RECORDER_DOWN)
            standing = kept.text if kept is not None and kept.cleared_at is None else None
            return recorder.conditions(self.config.recorder.live_dir, watch.settings, standing)

        def tell(event: dict) -> None:
            if self.config.webhook is not None:
                add_to_outbox(self.catalogue, event)
        watch = AlarmNotifier(self.config.alarms, self.catalogue, conditions, {RECORDER_DOWN},
                              self.config.web, tell, name="recorder-watch")
        return watch

    def close(self) -> None:
        """Stop watching the recorder, close the databases."""
        for service in (self.watch, self.tagger):
            if service is not None:
                service.stop(timeout=service.beat_s)
        self.catalogue.close()
        self.accounts.close()


def backend() -> Backend:
    """The current app's backend."""
    return current_app.extensions["callrec"]
