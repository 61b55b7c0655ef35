"""Alarms that leave the box: the store's alarm mailed through a real SMTP server (aiosmtpd, with
STARTTLS and a certificate made here) once per episode, reminded and cleared, across a restart;
the same episodes as webhook events; the mail errors a technician can act on; the recorder down
told by the web UI's watch."""

import datetime
import html
import email
import email.policy
import ipaddress
import json
import ssl
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from appliance.alarms import AlarmNotifier, episodes, storage_conditions, TITLES, RECORDER_DOWN
from appliance.config import AlarmsConfig, DEFAULT_PURPOSES, StoreConfig, WebConfig
from appliance.mail import MailError, probe
from appliance.store.catalogue import Catalogue
from appliance.store.retention import Store
from appliance.webhook import Webhook, verify
from conftest import _toml, free_port, wait_for
from test_store import add_call
from test_webhook import SECRET, Receiver, _no_proxy  # noqa: F401 (the fixture)

USER, PASSWORD = "shop@example.net", "mail password 1"


def certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own authority) and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test mail server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "mail-cert.pem", folder / "mail-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class MailServer:
    """A real SMTP server on 127.0.0.1: STARTTLS with the test's certificate (unless `starttls`
    is false), a login required; it keeps every message it takes with whether it came encrypted."""

    def __init__(self, folder: Path, starttls: bool = True):
        self.cert, key = certificate(folder)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, key)
        self.messages: list[dict] = []
        self.logins: list[str] = []
        server = self

        class Handler:
            async def handle_DATA(self, smtp, session, envelope):
                server.messages.append({"from": envelope.mail_from, "to": envelope.rcpt_tos,
                                        "encrypted": session.ssl is not None,
                                        "message": email.message_from_bytes(envelope.content, policy=email.policy.default)})
                return "250 OK"

        def authenticator(smtp, session, envelope, mechanism, data):
            ok = isinstance(data, LoginPassword) and data.login.decode() == USER and data.password.decode() == PASSWORD
            if ok:
                server.logins.append(data.login.decode())
            return AuthResult(success=ok, handled=False)       # a refusal answered 535

        self.port = free_port()
        tls = {"tls_context": context, "require_starttls": True} if starttls else {}
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, authenticator=authenticator,
                                     auth_required=True, auth_require_tls=starttls, **tls)

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()

    def table(self, folder: Path, **changes) -> dict:
        """The keys of an [alarms] table for this server, its password in a file of the appliance's only."""
        secret = folder / "mail-password"
        secret.write_text(PASSWORD + "\n")
        secret.chmod(0o600)
        return {"smtp_host": "127.0.0.1", "smtp_port": self.port, "ca_file": str(self.cert), "username": USER,
                "password_file": str(secret), "from_address": "callrec@shop.example", "to": ["owner@shop.example"],
                "settle_s": 0, "timeout_s": 5, **changes}

    def settings(self, folder: Path, **changes) -> AlarmsConfig:
        """[alarms] for this server."""
        return AlarmsConfig.model_validate(self.table(folder, **changes))

    def subjects(self) -> list[str]:
        return [m["message"]["Subject"] for m in self.messages]


@pytest.fixture
def store(tmp_path):
    catalogue = Catalogue(tmp_path)
    yield Store(catalogue, tmp_path, DEFAULT_PURPOSES, StoreConfig(min_free_mb=0, min_free_hours=0))
    catalogue.close()


def notifier(store: Store, settings: AlarmsConfig, tell=None) -> AlarmNotifier:
    """The recorder's notifier as it watches the store (its other conditions are the recorder's)."""
    return AlarmNotifier(settings, store.catalogue, lambda: storage_conditions(store),
                         set(TITLES) - {RECORDER_DOWN}, WebConfig(), tell)


def short_of_space(store: Store) -> None:
    """Space pressure the cleaner cannot relieve: a floor above the disk, only an agreement left."""
    store.settings = StoreConfig(min_free_mb=10**9, protected_grace_hours=24)
    assert store.clean().alarm is not None


def room_again(store: Store) -> None:
    store.settings = StoreConfig(min_free_mb=0, min_free_hours=0)
    assert store.clean().alarm is None


def test_the_storage_alarm_is_mailed_once_per_episode_reminded_and_cleared_across_a_restart(store, tmp_path):
    add_call(store, 9, "agreement", size=4000)
    add_call(store, 5, "training", size=4000)
    with MailServer(tmp_path) as server:
        settings = server.settings(tmp_path, reminder_hours=3 / 3600)
        alarms = notifier(store, settings)
        short_of_space(store)                   # the real cleaner evicts the training call, then must stop
        assert len(store.catalogue.calls()) == 1
        alarms.check()
        assert alarms.mail()
        assert sorted(server.subjects()) == [
            "[callrec callrec.local] ALARM: Calls kept for a contract or the law will be evicted",
            "[callrec callrec.local] ALARM: Storage short of space"]
        storage = next(m for m in server.messages if "Storage" in m["message"]["Subject"])
        body = storage["message"].get_content()
        assert store.alarm() in " ".join(body.split()) and "reminded every 0.000833333 h while it stands" in body
        assert storage["encrypted"] and server.logins == [USER]
        assert storage["from"] == "callrec@shop.example" and storage["to"] == ["owner@shop.example"]
        assert storage["message"]["Auto-Submitted"] == "auto-generated"

        store.clean()                           # the alarm still stands: nothing more is sent
        alarms.check()
        alarms.mail()
        restarted = notifier(store, settings)   # nor after a restart
        restarted.check()
        restarted.mail()
        assert len(server.messages) == 2

        time.sleep(3.2)                         # the reminder interval
        restarted.check()
        restarted.mail()
        assert sorted(server.subjects()[2:]) == [
            "[callrec callrec.local] Still standing: Calls kept for a contract or the law will be evicted",
            "[callrec callrec.local] Still standing: Storage short of space"]
        restarted.check()
        restarted.mail()
        assert len(server.messages) == 4

        room_again(store)
        restarted.check()
        restarted.mail()
        assert sorted(server.subjects()[4:]) == [
            "[callrec callrec.local] Cleared: Calls kept for a contract or the law will be evicted",
            "[callrec callrec.local] Cleared: Storage short of space"]
        cleared = server.messages[-1]["message"].get_content()
        assert "Raised:" in cleared and "Cleared:" in cleared
        assert episodes(store.catalogue) == {}
        restarted.check()
        restarted.mail()
        assert len(server.messages) == 6


def test_a_mail_that_fails_is_kept_and_sent_once_the_server_takes_it(store, tmp_path):
    add_call(store, 9, "agreement", size=4000)
    port = free_port()
    with MailServer(tmp_path) as server:
        down = server.settings(tmp_path, smtp_port=port)        # nothing listens there yet
    alarms = notifier(store, down)
    short_of_space(store)
    alarms.check()
    assert not alarms.mail()
    kept = episodes(store.catalogue)["storage"]
    assert kept.pending == "raised" and "refused the connection" in kept.mail_error
    assert not alarms.mail()                    # within its back-off, no new attempt
    alarms._mail_due = 0.0                      # the back-off has run out
    with MailServer(tmp_path) as server:
        alarms.settings = server.settings(tmp_path, smtp_port=server.port)
        assert alarms.mail()
        assert len(server.messages) == 2
    kept = episodes(store.catalogue)["storage"]
    assert kept.pending is None and kept.mail_error is None and kept.mailed_at is not None


def test_the_alarm_reaches_the_webhook_as_an_event_of_its_own_signed_like_a_call(store):
    add_call(store, 9, "agreement", size=4000)
    with Receiver() as receiver:
        hook = Webhook(receiver.url, SECRET, store.catalogue, timeout_s=2, retry_first_s=0.05, retry_max_s=0.1)
        hook.start()
        try:
            alarms = notifier(store, AlarmsConfig(settle_s=0), hook.send)     # no mail: the webhook only
            short_of_space(store)
            alarms.check()
            assert wait_for(lambda: len(receiver.requests) == 2, 10)
            room_again(store)
            alarms.check()
            assert wait_for(lambda: len(receiver.requests) == 4, 10)
        finally:
            hook.stop(timeout=5)
    events = []
    for request in receiver.requests:
        headers = request["headers"]
        assert verify(SECRET, headers["X-Callrec-Timestamp"], request["body"], headers["X-Callrec-Signature"])
        events.append(json.loads(request["body"]))
    kinds = [(e["event"], e["alarm"]) for e in events]
    assert set(kinds[:2]) == {("alarm.raised", "storage"), ("alarm.raised", "protected_eviction")}
    assert set(kinds[2:]) == {("alarm.cleared", "storage"), ("alarm.cleared", "protected_eviction")}
    raised = next(e for e in events if e == {**e, "event": "alarm.raised", "alarm": "storage"})
    cleared = next(e for e in events if e == {**e, "event": "alarm.cleared", "alarm": "storage"})
    assert raised["title"] == "Storage short of space" and "free space" in raised["text"]
    assert raised["cleared_at"] is None and cleared["raised_at"] == raised["raised_at"] and cleared["cleared_at"]
    assert raised["appliance"] == "callrec.local"
    assert episodes(store.catalogue) == {}


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_mail_failures_say_what_to_fix(tmp_path):
    with MailServer(tmp_path) as server:
        good = server.settings(tmp_path)
        probe(good)
        (tmp_path / "wrong").write_text("not the password")
        with pytest.raises(MailError, match="refused the login of shop@example.net: wrong user name or password"):
            probe(good.model_copy(update={"password_file": tmp_path / "wrong"}))
        with pytest.raises(MailError, match="certificate of the mail server 127.0.0.1:.* is not trusted"):
            probe(good.model_copy(update={"ca_file": None}))
        with pytest.raises(MailError, match="no TLS with the mail server"):
            probe(good.model_copy(update={"security": "tls"}))      # TLS spoken to a STARTTLS port
    with MailServer(tmp_path, starttls=False) as plain:
        with pytest.raises(MailError, match="does not offer STARTTLS, and the appliance sends no mail unencrypted"):
            probe(plain.settings(tmp_path))
        assert plain.messages == [] and plain.logins == []              # the password never left the box
    with pytest.raises(MailError, match="refused the connection: check smtp_host and smtp_port"):
        probe(good.model_copy(update={"smtp_port": free_port()}))


def test_mail_settings_are_checked_saved_and_tried_from_the_settings_page_and_alarms_listed_on_the_status_page(web, tmp_path):
    from test_web import login, post

    app, _ = web
    backend = app.extensions["callrec"]
    admin = login(app, "admin")
    with MailServer(tmp_path) as server:
        form = {"smtp_host": "127.0.0.1", "smtp_port": str(server.port), "security": "starttls",
                "ca_file": str(server.cert), "username": USER, "password": "not the password",
                "from_address": "callrec@shop.example", "to": "owner@shop.example, tech@shop.example",
                "reminder_hours": "24", "webhook": ["off", "on"]}
        before = backend.config_path.read_text()
        post(admin, "/settings/alarms", **{**form, "from_address": "nobody"})
        page = html.unescape(admin.get("/settings/").data.decode())
        assert "alarms.from_address" in page and str(backend.config_path) in page
        assert backend.config_path.read_text() == before and backend.config.alarms is None
        assert not (backend.data_dir / "alarm-mail.password").exists()      # a refused change leaves no password

        post(admin, "/settings/alarms", **form)
        settings = backend.config.alarms
        assert settings.to == ["owner@shop.example", "tech@shop.example"] and settings.port == server.port
        assert settings.password_file.read_text() == "not the password\n"
        assert settings.password_file.stat().st_mode & 0o777 == 0o640
        post(admin, "/settings/alarms/test")
        page = html.unescape(admin.get("/settings/").data.decode())
        assert (f"The test e-mail was not sent: the mail server 127.0.0.1:{server.port} refused the login of "
                f"{USER}: wrong user name or password (535") in page
        assert server.messages == []

        post(admin, "/settings/alarms", **{**form, "password": PASSWORD})
        post(admin, "/settings/alarms", **{**form, "password": ""})          # empty: the password stays
        assert backend.config.alarms.password_file.read_text() == PASSWORD + "\n"
        post(admin, "/settings/alarms/test")
        assert "A test e-mail was sent to owner@shop.example, tech@shop.example." in admin.get("/settings/").data.decode()
        [test] = server.messages
        assert test["encrypted"] and test["to"] == ["owner@shop.example", "tech@shop.example"]
        assert test["message"]["Subject"] == "[callrec localhost] Test e-mail"
        assert post(login(app, "super"), "/settings/alarms/test").status_code == 403

        alarms = AlarmNotifier(backend.config.alarms.model_copy(update={"settle_s": 0}), backend.catalogue,
                               lambda: {"sound_card": "no sound card on line shop (cap1)"}, set(TITLES),
                               backend.config.web)
        alarms.check()
        assert alarms.mail()
    page = admin.get("/status", headers={"Accept-Language": "fr"}).data.decode()
    row = page[page.index('data-alarm="sound_card"'):]
    row = html.unescape(row[:row.index("</tr>")])
    assert "Carte son absente" in row and "no sound card on line shop (cap1)" in row and "envoyée" in row


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_the_doctor_tries_the_mail_settings_without_sending(tmp_path):
    from appliance import doctor
    from appliance.config import Config

    def config(settings: AlarmsConfig) -> Config:
        return Config.model_validate({"alarms": settings, "line": [{
            "name": "t1", "hook_pin": 17, "hook_active": "low", "capture": "c", "playback": "p", "notice": "n.wav"}]})

    with MailServer(tmp_path) as server:
        settings = server.settings(tmp_path)
        result = doctor.check_alarms(config(settings))
        assert result.status == "ok" and "STARTTLS, certificate trusted, logged in as shop@example.net" in result.message
        settings.password_file.chmod(0o640)         # the recorder's group: the web UI sends alarm mails too
        assert doctor.check_alarms(config(settings)).status == "ok"
        settings.password_file.chmod(0o644)
        result = doctor.check_alarms(config(settings))
        assert result.status == "fail" and "readable by others" in result.message and "chmod 640" in result.fix
        settings.password_file.chmod(0o600)
        result = doctor.check_alarms(config(settings.model_copy(update={"username": "someone@example.net"})))
        assert result.status == "fail" and "refused the login of someone@example.net" in result.message
        assert server.messages == []
    assert doctor.check_alarms(config(AlarmsConfig())).status == "info"


def test_a_recorder_started_again_and_again_is_down_though_its_live_state_is_fresh(tmp_path):
    from appliance.alarms import RecorderWatch
    from appliance.live import LIVE_NAME

    settings, watch = AlarmsConfig(), RecorderWatch(started=0)
    assert watch.conditions(tmp_path, settings, now=100) == {}          # no live state yet: it may be starting
    assert watch.conditions(tmp_path, settings, "down before", now=100) == {RECORDER_DOWN: "down before"}
    assert "no live state for 121 s" in watch.conditions(tmp_path, settings, now=121)[RECORDER_DOWN]
    for minute, pid in ((1, 100), (2, 100), (5, 101)):           # one restart (an upgrade) is not a fault
        (tmp_path / LIVE_NAME).write_text(json.dumps({"pid": pid}))
        assert watch.conditions(tmp_path, settings, now=minute * 60) == {}
    (tmp_path / LIVE_NAME).write_text(json.dumps({"pid": 102}))
    assert "started 3 times in 15 min" in watch.conditions(tmp_path, settings, now=8 * 60)[RECORDER_DOWN]
    assert watch.conditions(tmp_path, settings, now=40 * 60) == {}          # it has kept running since


def test_an_alarms_table_is_checked_like_the_rest_of_the_file(tmp_path):
    from appliance.config import load_config
    from appliance.errors import ConfigError
    from conftest import write_config

    path = write_config(tmp_path)
    base = path.read_text()
    for table, expected in (
            ('smtp_host = "mail.example.net"\nfrom_address = "callrec@shop.example"\n',
             "alarms: smtp_host needs from_address and to (a list of addresses)"),
            ('smtp_host = "mail.example.net"\nfrom_address = "callrec@shop.example"\nto = ["owner"]\n',
             "alarms.to[0]: String should match pattern"),
            ('to = ["owner@shop.example"]\n', "alarms: to: only with smtp_host (the mail server)"),
            ('smtp_host = "mail.example.net"\nfrom_address = "a@b.c"\nto = ["d@e.f"]\nsecurity = "none"\n',
             "alarms.security: Input should be 'starttls' or 'tls'"),
            ('smtp_host = "mail.example.net"\nfrom_address = "a@b.c"\nto = ["d@e.f"]\nusername = "me"\n',
             "alarms: username and password_file go together"),
            ('smtp_host = "mail.example.net"\nfrom_address = "a@b.c"\nto = ["d@e.f"]\nusername = "me"\n'
             'password_file = "missing.secret"\n', f"alarms.password_file: no such file {tmp_path / 'missing.secret'}")):
        path.write_text(base + "\n[alarms]\n" + table)
        with pytest.raises(ConfigError) as error:
            load_config(path)
        assert str(path) in str(error.value) and expected in str(error.value), str(error.value)


def test_the_running_recorder_mails_and_posts_a_missing_sound_card_once_mail_is_set(tmp_path, monkeypatch):
    from gpiozero.pins.mock import MockFactory

    from appliance.config import load_config
    from appliance.recorder import Recorder
    from appliance.simulate import simulated
    from conftest import simulated_cards, stop, write_config

    data = tmp_path / "data"
    alsa, feeders = simulated_cards(data, ["t1"])
    monkeypatch.setenv("ALSA_CONFIG_PATH", alsa)
    factory = MockFactory()
    (tmp_path / "webhook-secret").write_text(SECRET)
    with MailServer(tmp_path) as server, Receiver() as receiver:
        path = write_config(tmp_path)
        path.write_text(path.read_text() + f'\n[webhook]\nurl = "{receiver.url}"\nsecret_file = "webhook-secret"\n'
                        + "\n[alarms]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in
                                                   server.table(tmp_path, check_interval_s=1).items()))
        config = simulated(load_config(path), data)
        unplugged = config.line[0].model_copy(update={"capture": "callrec_sim_capture_unplugged"})
        config = config.model_copy(update={"line": [unplugged]})
        recorder = Recorder(config.model_copy(update={"alarms": None}), pin_factory=factory)
        recorder.start()
        try:
            assert recorder.reload(config) == []        # mail set on the settings page: at once
            assert recorder.alarms.is_alive()
            assert wait_for(lambda: server.messages and receiver.requests, 15)
        finally:
            recorder.stop()
            stop(feeders)
            factory.reset()
    [mail] = server.messages
    assert mail["message"]["Subject"] == "[callrec callrec.local] ALARM: Sound card missing"
    assert "no sound card on line t1 (callrec_sim_capture_unplugged)" in mail["message"].get_content()
    [request] = receiver.requests
    event = json.loads(request["body"])
    assert event["event"] == "alarm.raised" and event["alarm"] == "sound_card"
    assert verify(SECRET, request["headers"]["X-Callrec-Timestamp"], request["body"],
                  request["headers"]["X-Callrec-Signature"])


def test_the_web_server_tells_by_mail_that_the_recorder_is_down_then_back(web_appliance, tmp_path):
    import subprocess

    from appliance.live import LIVE_NAME
    from test_web_server import CALLREC, ROOT

    config, data, _ = web_appliance
    with MailServer(tmp_path) as server:
        table = server.table(tmp_path, recorder_down_after_s=10, check_interval_s=1)
        config.write_text(config.read_text() + "\n[alarms]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in table.items()))
        started = time.monotonic()
        web = subprocess.Popen([*CALLREC, "web", "--config", str(config)], cwd=ROOT, stderr=subprocess.DEVNULL)
        try:
            assert wait_for(lambda: server.messages, 40), "no mail from the web UI's watch"
            assert time.monotonic() - started >= 10            # the recorder's state was missing that long
            assert server.subjects() == ["[callrec localhost] ALARM: Recorder not running"]
            live = data / "run"
            live.mkdir(exist_ok=True)
            (live / LIVE_NAME).write_text(json.dumps({"pid": 4242, "lines": []}))       # the recorder is back
            assert wait_for(lambda: len(server.messages) == 2, 10)
            assert server.subjects()[1] == "[callrec localhost] Cleared: Recorder not running"
        finally:
            web.terminate()
            web.wait(15)
