"""Serving the web UI: cheroot (CherryPy's production WSGI server) over HTTPS with the device's own
certificate, made at first start, and a plain-HTTP listener that only redirects to HTTPS."""

import datetime
import ipaddress
import logging
import os
import re
import socket
import threading
import urllib.parse
from pathlib import Path

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from werkzeug.wsgi import FileWrapper

from appliance.config import load_config
from appliance.keys import certificate_fingerprint

log = logging.getLogger(__name__)

TLS_DIR, CERT_NAME, KEY_NAME = "tls", "cert.pem", "key.pem"
CERT_YEARS = 10
# cheroot offers no wsgi.file_wrapper, so send_file would read 8 KB at a time, each piece a small TLS
# record through cheroot's Python writer: half nginx's throughput (bench/web). 128 KB matches it.
SEND_BLOCK = 128 * 1024


def ensure_certificate(folder: Path, hostname: str) -> tuple[Path, Path]:
    """The device's self-signed certificate and key (made once; the key readable by the appliance
    only). Names: the configured host name, `localhost`, the machine's host name, 127.0.0.1."""
    cert, key_path = folder / CERT_NAME, folder / KEY_NAME
    if cert.is_file() and key_path.is_file():
        return cert, key_path
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    names = {hostname, "localhost", socket.gethostname(), f"{socket.gethostname()}.local"}
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "callrec appliance")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365 * CERT_YEARS))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(n) for n in sorted(names)] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256()))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    log.info("made the device's web certificate %s", cert)
    return cert, key_path


HOST_PATTERN = re.compile(r"[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]")


def redirect_app(https_port: int, hostname: str):
    """A WSGI app that sends every request to the same path over HTTPS: on the host the browser
    asked for when it is a plain name or address, else on `hostname`."""
    def app(environ, start_response):
        asked = environ.get("HTTP_HOST", "")
        asked = asked[:asked.index("]") + 1] if asked.startswith("[") and "]" in asked else asked.split(":")[0]
        host = asked if HOST_PATTERN.fullmatch(asked) else hostname
        port = "" if https_port == 443 else f":{https_port}"
        # The path is decoded by the server: quote it again, so no CR/LF or space reaches the header.
        path = urllib.parse.quote(environ.get("PATH_INFO", "/"), safe="/%:@!$&'()*+,;=-._~")
        query = urllib.parse.quote(environ.get("QUERY_STRING", ""), safe="/%:@!$&'()*+,;=-._~?")
        start_response("301 Moved Permanently", [("Location", f"https://{host}{port}{path}{'?' + query if query else ''}"),
                                                 ("Content-Length", "0")])
        return [b""]
    return app


def with_file_wrapper(app):
    """`app` given a `wsgi.file_wrapper` that sends files in pieces of at least SEND_BLOCK bytes."""
    def file_wrapper(file, block_size: int = SEND_BLOCK) -> FileWrapper:
        return FileWrapper(file, max(block_size, SEND_BLOCK))

    def wrapped(environ, start_response):
        environ["wsgi.file_wrapper"] = file_wrapper
        return app(environ, start_response)
    return wrapped


class WebServer:
    """The HTTPS server and its HTTP redirect, each on its own thread."""

    def __init__(self, config_path: Path):
        from web import create_app

        config = load_config(config_path)
        web = config.web
        self.app = create_app(config_path)
        accounts = self.app.extensions["callrec"].accounts
        cert, key = ensure_certificate(accounts.folder / TLS_DIR, web.hostname)
        self.https = wsgi.Server((web.bind, web.https_port), with_file_wrapper(self.app),
                                 numthreads=web.threads, server_name=web.hostname)
        self.https.ssl_adapter = BuiltinSSLAdapter(str(cert), str(key))
        self.cert = cert
        self.http = (wsgi.Server((web.bind, web.http_port), redirect_app(web.https_port, web.hostname), numthreads=2)
                     if web.http_port else None)
        self.setup_code = accounts.setup_code()
        self.web = web

    def start(self) -> None:
        """Bind and serve in the background."""
        for server in filter(None, (self.https, self.http)):
            server.prepare()
            threading.Thread(target=server.serve, name=f"web-{server.bind_addr[1]}", daemon=True).start()
        log.info("web UI on https://%s:%s/, certificate SHA-256 fingerprint %s", self.web.hostname,
                 self.https.bind_addr[1], certificate_fingerprint(self.cert.read_text()))
        if self.setup_code:
            message = (f"callrec web setup code: {self.setup_code}  (open https://{self.web.hostname}"
                       f"{'' if self.web.https_port == 443 else f':{self.web.https_port}'}/setup)")
            log.warning(message)       # the unit sends the log to the console too

    def problem(self, timeout: float) -> str | None:
        """Why the web UI should be restarted (for the watchdog): None while it answers its own
        health check over HTTPS within `timeout` seconds."""
        import ssl
        import urllib.request

        host = "127.0.0.1" if self.web.bind in ("0.0.0.0", "::") else self.web.bind
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE    # its own certificate
        try:
            with urllib.request.urlopen(f"https://{host}:{self.https.bind_addr[1]}/healthz", timeout=timeout,
                                        context=context) as answer:
                return None if answer.status == 200 else f"the web UI answers {answer.status} to its health check"
        except OSError as exc:
            return f"the web UI does not answer its health check: {exc}"

    def stop(self) -> None:
        """Stop serving and close the databases."""
        for server in filter(None, (self.https, self.http)):
            server.stop()
        self.app.extensions["callrec"].close()
