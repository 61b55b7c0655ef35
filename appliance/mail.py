"""E-mail from the appliance: one SMTP connection, always encrypted (STARTTLS required, or TLS from
the first byte), the server's certificate verified against the system's authorities or the one
in `ca_file`, an optional login whose password is read from its file at each use.

Every failure is a `MailError` whose message says what the technician can do about it: the server
refused the connection, offers no STARTTLS, shows a certificate that is not trusted, refused the
login, or refused the sender or a recipient.
"""

import smtplib
import socket
import ssl
import time
import uuid
from contextlib import contextmanager
from email.message import EmailMessage
from email.utils import formatdate

from appliance.config import AlarmsConfig
from appliance.errors import CallrecError


class MailError(CallrecError, OSError):
    """An e-mail could not be sent; the message says why and what to check."""


def password(settings: AlarmsConfig) -> str | None:
    """The login's password, read from `password_file` (None without a login)."""
    if settings.password_file is None:
        return None
    try:
        return settings.password_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise MailError("cannot read the mail password file {path}: {reason}", path=str(settings.password_file),
                        reason=exc.strerror or str(exc)) from None


def message(settings: AlarmsConfig, subject: str, body: str) -> EmailMessage:
    """A plain-text message from `from_address` to every address of `to`."""
    mail = EmailMessage()
    mail["From"] = settings.from_address
    mail["To"] = ", ".join(settings.to)
    mail["Subject"] = subject
    mail["Date"] = formatdate(time.time(), localtime=False)
    mail["Message-ID"] = f"<{uuid.uuid4()}@{settings.from_address.rpartition('@')[2]}>"
    mail["Auto-Submitted"] = "auto-generated"       # RFC 3834: no vacation replies to an alarm
    mail.set_content(body)
    return mail


def send(settings: AlarmsConfig, messages: list[EmailMessage]) -> None:
    """Send `messages` over one connection; raises MailError on the first that fails."""
    with connect(settings) as smtp:
        for mail in messages:
            try:
                smtp.send_message(mail)
            except smtplib.SMTPRecipientsRefused as exc:
                raise MailError("the mail server refused the recipient(s) {to}: {reason}",
                                to=", ".join(exc.recipients), reason=_first_reason(exc.recipients)) from None
            except smtplib.SMTPSenderRefused as exc:
                raise MailError("the mail server refused the sender {sender}: {reason}", sender=settings.from_address,
                                reason=_reply(exc.smtp_code, exc.smtp_error)) from None
            except smtplib.SMTPDataError as exc:
                raise MailError("the mail server refused the message: {reason}",
                                reason=_reply(exc.smtp_code, exc.smtp_error)) from None
            except (smtplib.SMTPException, OSError) as exc:
                raise MailError("the mail server dropped the connection while sending: {reason}",
                                reason=str(exc) or type(exc).__name__) from None


def probe(settings: AlarmsConfig) -> None:
    """Connect, encrypt, check the certificate and log in as a sending would, then quit without
    sending anything; raises MailError."""
    with connect(settings):
        pass


@contextmanager
def connect(settings: AlarmsConfig):
    """An SMTP connection, encrypted, its certificate checked and logged in: `with connect(s) as smtp`.
    Raises MailError when any of that fails."""
    smtp = _open(settings)
    try:
        yield smtp
    finally:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()


def _open(settings: AlarmsConfig) -> smtplib.SMTP:
    where = f"{settings.smtp_host}:{settings.port}"
    secret = password(settings)
    context = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    smtp = None
    try:
        if settings.security == "tls":
            smtp = smtplib.SMTP_SSL(settings.smtp_host, settings.port, timeout=settings.timeout_s, context=context)
        else:
            smtp = smtplib.SMTP(settings.smtp_host, settings.port, timeout=settings.timeout_s)
            smtp.ehlo()
            if not smtp.has_extn("starttls"):
                raise MailError("the mail server {where} does not offer STARTTLS, and the appliance sends no mail "
                                "unencrypted: use its submission port (587), or security = \"tls\" on port 465",
                                where=where)
            smtp.starttls(context=context)
            smtp.ehlo()
        if settings.username is not None:
            smtp.login(settings.username, secret)
        return smtp
    except BaseException as exc:
        if smtp is not None:
            smtp.close()
        raise _explained(exc, settings, where) from None


def _explained(exc: BaseException, settings: AlarmsConfig, where: str) -> BaseException:
    """The MailError that says what a failure to connect, encrypt or log in means."""
    if isinstance(exc, MailError) or not isinstance(exc, (smtplib.SMTPException, OSError)):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        return MailError("the certificate of the mail server {where} is not trusted ({reason}): check smtp_host, "
                         "or give the server's authority in ca_file", where=where,
                         reason=exc.verify_message or str(exc))
    if isinstance(exc, ssl.SSLError):
        return MailError("no TLS with the mail server {where} ({reason}): does this port speak security = "
                         "\"{security}\"?", where=where, reason=exc.reason or str(exc), security=settings.security)
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return MailError("the mail server {where} refused the login of {user}: wrong user name or password "
                         "({reason})", where=where, user=settings.username, reason=_reply(exc.smtp_code, exc.smtp_error))
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return MailError("the mail server {where} offers no login (AUTH): remove username and password_file, or "
                         "use its submission port", where=where)
    if isinstance(exc, ConnectionRefusedError):
        return MailError("the mail server {where} refused the connection: check smtp_host and smtp_port",
                         where=where)
    if isinstance(exc, socket.gaierror):
        return MailError("the mail server's name {host} is not known here: check smtp_host and the appliance's DNS",
                         host=settings.smtp_host)
    if isinstance(exc, TimeoutError):
        return MailError("the mail server {where} did not answer within {seconds} s: is a firewall in the way?",
                         where=where, seconds=f"{settings.timeout_s:g}")
    return MailError("cannot talk to the mail server {where}: {reason}", where=where,
                     reason=str(exc) or type(exc).__name__)


def _reply(code, text) -> str:
    """An SMTP reply as one line: "535 5.7.8 Authentication failed"."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return f"{code} {' '.join(str(text).split())}".strip()


def _first_reason(recipients: dict) -> str:
    code, text = next(iter(recipients.values()))
    return _reply(code, text)
