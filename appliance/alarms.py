"""Alarms that leave the box: each condition the appliance cannot fix by itself (the store short of
space, calls kept for a contract or the law about to be evicted, a missing sound card, a lost
modem, a SIP trunk down, a dead service, an unsynchronised clock, an offload backlog, the
recorder down) is told by e-mail and as a webhook event, once per episode.

An episode is raised once its condition has stood for `settle_s` (the clock's for
`clock_unsynced_minutes`), told again every `reminder_hours` while it stands, and cleared once the
condition has been gone for `settle_s`: one message each. Its state is a JSON value under
`alarm:<name>` in the catalogue's status table, written before anything is sent, so a restart
neither sends an episode again nor forgets one: a message not yet mailed is mailed after it. A
failed mail is tried again with back-off, from the notifier's own thread; nothing real-time ever
waits for it. A message still waiting is not stacked: a reminder waits for the one before, and a
clearing replaces a raising never mailed (it says when the alarm was raised).

The recorder's notifier watches every condition but one: the recorder cannot tell its own death.
The web UI runs a notifier for that one only (`recorder_down`, see `RecorderWatch`), so each
episode has a single owner.
"""

import json
import logging
import time
from collections import deque
from dataclasses import dataclass

from appliance.clock import epoch_of, iso_utc
from appliance.config import AlarmsConfig, WebConfig
from appliance.live import read_live
from appliance.mail import MailError, message, send
from appliance.service import Backoff, Service

log = logging.getLogger(__name__)

STATUS_PREFIX = "alarm:"
# Every alarm, and the title a message gives it.
TITLES = {
    "storage": "Storage short of space",
    "protected_eviction": "Calls kept for a contract or the law will be evicted",
    "sound_card": "Sound card missing",
    "modem": "Caller-ID modem lost",
    "sip_trunk": "SIP trunk down",
    "sip_peer": "SIP peer not answering",
    "service": "A recorder service is dead or stuck",
    "clock": "Clock not synchronised",
    "offload_backlog": "Recordings wait to be offloaded",
    "recorder_down": "Recorder not running",
}
RECORDER_DOWN = "recorder_down"
RESTART_WINDOW_S = 900.0     # the recorder started RESTARTS_DOWN times within this is down
RESTARTS_DOWN = 3
MAIL_RETRY_FIRST_S = 30.0
MAIL_RETRY_MAX_S = 3600.0


@dataclass
class Episode:
    """One alarm from its raising to its clearing, as kept in the status table. `pending` is the
    message not mailed yet ("raised", "reminder", "cleared" or None); `told_at` when the last
    raising or reminder was decided; `mailed_at` when the last message went out."""

    text: str
    raised_at: str
    told_at: str
    cleared_at: str | None = None
    pending: str | None = None
    mailed_at: str | None = None
    mail_error: str | None = None

    @classmethod
    def loads(cls, value: str) -> "Episode":
        """An episode from its JSON text."""
        return cls(**json.loads(value))

    def dumps(self) -> str:
        """The JSON text kept in the status table."""
        return json.dumps(self.__dict__, ensure_ascii=False, sort_keys=True)


def episodes(catalogue) -> dict[str, Episode]:
    """Every alarm episode standing or with a message still to send, by alarm name."""
    found = {}
    for key, value in catalogue.statuses(STATUS_PREFIX).items():
        try:
            found[key.removeprefix(STATUS_PREFIX)] = Episode.loads(value)
        except (ValueError, TypeError):
            log.error("alarm state %s is unreadable; it is started again", key)
    return found


def event(name: str, episode: Episode, kind: str, appliance: str) -> dict:
    """The webhook body of an alarm message (documented in docs/alarms.md)."""
    return {"event": f"alarm.{kind}", "alarm": name, "title": TITLES.get(name, name), "text": episode.text,
            "raised_at": episode.raised_at, "cleared_at": episode.cleared_at, "appliance": appliance,
            "at": iso_utc(time.time())}


def status_page(web: WebConfig) -> str:
    """The address of the web UI's status page."""
    return f"https://{web.hostname}{'' if web.https_port == 443 else f':{web.https_port}'}/status"


def mail_of(name: str, episode: Episode, settings: AlarmsConfig, web: WebConfig):
    """The e-mail of an episode's pending message."""
    title = TITLES.get(name, name)
    appliance = web.hostname
    if episode.pending == "cleared":
        subject = f"[callrec {appliance}] Cleared: {title}"
        lines = [f"The alarm \"{title}\" of the call recorder {appliance} is cleared.", "",
                 f"Raised:  {episode.raised_at}", f"Cleared: {episode.cleared_at}", f"Last said: {episode.text}"]
    else:
        again = episode.pending == "reminder"
        subject = f"[callrec {appliance}] {'Still standing' if again else 'ALARM'}: {title}"
        lines = [f"The call recorder {appliance} {'still has' if again else 'raised'} an alarm: {title}.", "",
                 f"Since: {episode.raised_at}", "", episode.text, ""]
        if settings.reminder_hours:
            lines.append(f"You will be reminded every {settings.reminder_hours:g} h while it stands, and told when it clears.")
        else:
            lines.append("You will be told when it clears.")
    lines += ["", f"The status page lists every alarm: {status_page(web)}"]
    return message(settings, subject, "\n".join(lines) + "\n")


class AlarmNotifier(Service):
    """Watches `conditions()` (alarm name → text, for the conditions present now) every
    `check_interval_s`, keeps the episodes of the alarms in `owned`, and tells each message by
    e-mail (with `smtp_host`) and through `tell(event)` (the webhook, or None), naming the
    appliance and its status page from `web`."""

    def __init__(self, settings: AlarmsConfig, catalogue, conditions, owned: set[str], web: WebConfig,
                 tell=None, name: str = "alarms"):
        super().__init__(name)
        self.settings = settings
        self.catalogue = catalogue
        self.conditions = conditions
        self.owned = owned
        self.web = web                  # its name and status page, in every message
        self.tell = tell                # with `webhook = true` only (a setting that may change)
        self.beat_s = max(Service.beat_s, 3 * settings.timeout_s)     # one mail connection between beats
        self._seen: dict[str, float] = {}       # monotonic: since when a condition is present
        self._gone: dict[str, float] = {}       # monotonic: since when a standing alarm's condition is not
        self._backoff = Backoff(MAIL_RETRY_FIRST_S, MAIL_RETRY_MAX_S)
        self._mail_due = 0.0                    # monotonic: no mail before this (back-off)

    def serve(self) -> None:
        """Check, tell and mail every `check_interval_s` until stopped; a failing pass is logged
        and the next one tries again."""
        while not self.stopping.is_set():
            try:
                self.check()
                self.mail()
            except Exception:
                log.exception("alarms: a pass failed; the next one tries again")
            left = self._mail_due - time.monotonic()
            self.wait(min(self.settings.check_interval_s, left) if left > 0 else self.settings.check_interval_s)

    def _settle(self, name: str) -> float:
        if name == "clock":
            return self.settings.clock_unsynced_minutes * 60
        if name == RECORDER_DOWN:
            return 0.0      # the condition is already `recorder_down_after_s` old
        return self.settings.settle_s

    def check(self, now: float | None = None) -> list[dict]:
        """Compare the conditions with the kept episodes: raise, remind and clear, each written
        before it is told. Returns the webhook events told."""
        now = time.monotonic() if now is None else now
        wall = iso_utc(time.time())
        present = {name: text for name, text in self.conditions().items() if name in self.owned}
        for name in list(self._seen):
            if name not in present:
                del self._seen[name]
        kept = {name: episode for name, episode in episodes(self.catalogue).items() if name in self.owned}
        told = []
        mail = self.settings.smtp_host is not None
        for name, text in present.items():
            self._gone.pop(name, None)
            episode = kept.get(name)
            standing = episode is not None and episode.cleared_at is None
            if not standing:
                if now - self._seen.setdefault(name, now) < self._settle(name):
                    continue
                episode = Episode(text, wall, wall, pending="raised" if mail else None)
                log.error("alarm raised: %s: %s", TITLES.get(name, name), text)
                told.append(self._save(name, episode, "raised"))
            elif self._reminder_due(episode):
                episode.text, episode.told_at = text, wall
                if mail:
                    episode.pending = episode.pending or "reminder"
                told.append(self._save(name, episode, "reminder"))
            elif episode.text != text:
                episode.text = text
                self._save(name, episode)
        for name, episode in kept.items():
            if name in present or episode.cleared_at is not None:
                continue
            if now - self._gone.setdefault(name, now) < self.settings.settle_s:
                continue
            del self._gone[name]
            episode.cleared_at = wall
            log.warning("alarm cleared: %s", TITLES.get(name, name))
            if mail and (episode.mailed_at is not None or episode.pending is not None):
                episode.pending = "cleared"
                told.append(self._save(name, episode, "cleared"))
            else:
                told.append(self._tell(name, episode, "cleared"))
                self.catalogue.set_status(STATUS_PREFIX + name, None)
        return [event for event in told if event is not None]

    def _reminder_due(self, episode: Episode) -> bool:
        if not self.settings.reminder_hours:
            return False
        told = epoch_of(episode.told_at)
        return time.time() - told >= self.settings.reminder_hours * 3600

    def _save(self, name: str, episode: Episode, kind: str | None = None) -> dict | None:
        """Keep the episode, then tell the webhook of `kind` (if any)."""
        self.catalogue.set_status(STATUS_PREFIX + name, episode.dumps())
        return self._tell(name, episode, kind) if kind is not None else None

    def _tell(self, name: str, episode: Episode, kind: str) -> dict | None:
        if self.tell is None or not self.settings.webhook:
            return None
        body = event(name, episode, kind, self.web.hostname)
        try:
            self.tell(body)
        except Exception:
            log.exception("alarms: cannot hand the %s event of %s to the webhook", kind, name)
        return body

    def mail(self) -> bool:
        """Mail every pending message over one connection, unless a failure's back-off runs;
        True when nothing is left to mail."""
        if self.settings.smtp_host is None:
            return True
        waiting = {name: episode for name, episode in episodes(self.catalogue).items()
                   if name in self.owned and episode.pending is not None}
        if not waiting:
            return True
        if time.monotonic() < self._mail_due:
            return False
        mails = [mail_of(name, episode, self.settings, self.web)
                 for name, episode in waiting.items()]
        try:
            send(self.settings, mails)
        except MailError as exc:
            delay = self._backoff.next()
            self._mail_due = time.monotonic() + delay
            log.warning("alarms: cannot mail %d message(s): %s; trying again in %g s", len(mails), exc, delay)
            for name in waiting:
                self._update(name, lambda kept: setattr(kept, "mail_error", str(exc)))
            return False
        self._backoff.reset()
        self._mail_due = 0.0
        sent = iso_utc(time.time())
        for name, episode in waiting.items():
            self._mailed(name, episode.pending, sent)
        log.info("alarms: mailed %d message(s) to %s", len(mails), ", ".join(self.settings.to))
        return True

    def _update(self, name: str, change) -> Episode | None:
        """Change the kept episode of `name` (read again: the check may have moved it on)."""
        kept = episodes(self.catalogue).get(name)
        if kept is not None:
            change(kept)
            self.catalogue.set_status(STATUS_PREFIX + name, kept.dumps())
        return kept

    def _mailed(self, name: str, kind: str, sent: str) -> None:
        kept = episodes(self.catalogue).get(name)
        if kept is None:
            return
        if kept.pending == kind == "cleared":
            self.catalogue.set_status(STATUS_PREFIX + name, None)      # the episode is over
            return
        kept.mailed_at, kept.mail_error = sent, None
        if kept.pending == kind:
            kept.pending = None
        self.catalogue.set_status(STATUS_PREFIX + name, kept.dumps())


# -- the conditions -------------------------------------------------------------------------------

def storage_conditions(store) -> dict[str, str]:
    """The store's alarms: short of space with nothing left to evict (or the reserve given back),
    and calls kept for a contract or the law being all that is left to evict."""
    found = {}
    # As the cleaner's last pass found it (the reserve given back too): the reserve is not in place
    # yet between the start and the first pass, which is no alarm.
    text = store.alarm()
    if text:
        found["storage"] = text
    since = store.protected_alarm_since()
    if since is not None:
        start = epoch_of(since)
        due = iso_utc(start + store.settings.protected_grace_hours * 3600)
        found["protected_eviction"] = (
            f"since {since}, only calls kept for a contract or the law are left to delete to make room; the "
            f"oldest of them will be evicted from {due} unless room is made: release holds, lift restrictions, "
            f"offload and delete, or add storage")
    return found


def offload_condition(catalogue, settings: AlarmsConfig, target: str, now: float | None = None) -> dict[str, str]:
    """An offload backlog: more than `offload_backlog_calls` recordings waiting, or the oldest
    waiting longer than `offload_backlog_hours`."""
    count, oldest = catalogue.waiting_offload()
    if not count:
        return {}
    now = time.time() if now is None else now
    age_h = (now - epoch_of(oldest)) / 3600 if oldest else 0.0
    if count <= settings.offload_backlog_calls and age_h <= settings.offload_backlog_hours:
        return {}
    return {"offload_backlog": f"{count} recordings wait to be copied to {target}, the oldest since {oldest} "
                               f"({age_h:.1f} h): check the target (callrec doctor)"}


class RecorderWatch:
    """The web UI's view of the recorder, which cannot tell its own death: down when it has
    published no live state for `recorder_down_after_s` (counted from the watch's start, as the
    recorder may be starting too), or when it was started again and again (a crash at every start
    leaves a fresh live state for a few seconds each time)."""

    def __init__(self, started: float | None = None):
        self.seen = time.monotonic() if started is None else started     # last fresh state (or the start)
        self.starts: deque[tuple[float, int | None]] = deque()      # (monotonic, pid) of each start seen

    def conditions(self, live_dir, settings: AlarmsConfig, standing: str | None = None,
                   now: float | None = None) -> dict[str, str]:
        """`recorder_down` and what is wrong, or nothing while the recorder runs on. While it is
        not known yet (no fresh state, but not for long), an episode `standing` (its text) stands on."""
        now = time.monotonic() if now is None else now
        live = read_live(live_dir)
        if live is None:
            if now - self.seen <= settings.recorder_down_after_s:
                return {RECORDER_DOWN: standing} if standing else {}
            return {RECORDER_DOWN: f"the recorder has published no live state for {now - self.seen:.0f} s: it is "
                                   f"stopped, or it crashed; no call is recorded. Check `systemctl status "
                                   f"callrec-recorder` and `journalctl -u callrec-recorder`"}
        self.seen = now
        if not self.starts or self.starts[-1][1] != live.get("pid"):
            self.starts.append((now, live.get("pid")))
        while len(self.starts) > 1 and now - self.starts[0][0] > RESTART_WINDOW_S:
            self.starts.popleft()
        if len(self.starts) >= RESTARTS_DOWN:
            return {RECORDER_DOWN: f"the recorder was started {len(self.starts)} times in {RESTART_WINDOW_S / 60:g} "
                                   f"min: it fails again and again, and calls are lost between its starts. Check "
                                   f"`journalctl -u callrec-recorder`"}
        return {}
