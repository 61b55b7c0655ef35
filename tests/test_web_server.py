"""The web UI's server as the shop's LAN meets it: `callrec web` in its own process, over real TLS.
Idle and slow connections do not stall it, parallel logins hash two at a time in bounded memory,
its certificate is one phones accept (names, addresses, serverAuth, lifetime, a chain to the
appliance's authority with name constraints), an owner's certificate can replace it, and
testssl.sh finds nothing wrong but the private chain."""

import http.client
import json
import re
import shutil
import socket
import statistics
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import PASSWORD, wait_for

ROOT = Path(__file__).resolve().parent.parent
CALLREC = [sys.executable, "-m", "appliance"]


def https_port(config: Path) -> int:
    return int(re.search(r"https_port = (\d+)", config.read_text()).group(1))


def insecure() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def healthz_s(port: int) -> float:
    """Seconds for a new connection's `GET /healthz`, TLS handshake included."""
    started = time.perf_counter()
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=10, context=insecure()) as answer:
        assert answer.status == 200
    return time.perf_counter() - started


@pytest.fixture
def served(web_appliance):
    """`callrec web` serving the appliance of `web_appliance`: yields (process, config, data)."""
    config, data, _ = web_appliance
    process = subprocess.Popen([*CALLREC, "web", "--config", str(config)], cwd=ROOT, stderr=subprocess.PIPE, text=True)

    def answers() -> bool:
        try:
            return healthz_s(https_port(config)) >= 0
        except OSError:
            return False
    try:
        assert wait_for(answers, 30), "the web UI did not start"
        yield process, config, data
    finally:
        process.terminate()
        process.wait(15)


def test_idle_and_slow_connections_do_not_stall_the_ui(served):
    _, config, _ = served
    port = https_port(config)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]      # no TLS handshake at all
    slow = []
    for _ in range(20):                          # a handshake, then a request's headers a byte a second
        connection = insecure().wrap_socket(socket.create_connection(("127.0.0.1", port)))
        connection.sendall(b"GET /healthz HTTP/1.1\r\n")
        slow.append(connection)
    stop = threading.Event()

    def trickle():
        while not stop.wait(1.0):
            for connection in slow:
                try:
                    connection.sendall(b"X")
                except OSError:
                    pass
    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        times = []
        for _ in range(20):
            times.append(healthz_s(port))
            time.sleep(0.25)
    finally:
        stop.set()
        trickler.join()
        for connection in idle + slow:
            connection.close()
    print(f"/healthz with 50 idle and 20 slow connections open: median {statistics.median(times) * 1000:.0f} ms, "
          f"slowest {max(times) * 1000:.0f} ms")
    # A stalled UI answered in about 10 s; the test suite's other files load the machine meanwhile.
    assert statistics.median(times) < 0.2 and max(times) < 1.0, times


def log_in(port: int, name: str, password: str, source: str = "127.0.0.1") -> int:
    """Log in as a browser on the LAN at `source` does (the form's CSRF token, the session cookie):
    the answer's status."""
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=insecure(),
                                             source_address=(source, 0))
    connection.request("GET", "/login")
    page = connection.getresponse()
    cookie = page.getheader("Set-Cookie").split(";")[0]
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.read().decode()).group(1)
    form = urllib.parse.urlencode({"csrf_token": token, "name": name, "password": password})
    connection.request("POST", "/login", body=form, headers={"Cookie": cookie,
                                                             "Content-Type": "application/x-www-form-urlencoded"})
    answer = connection.getresponse()
    answer.read()
    connection.close()
    return answer.status


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def test_twenty_parallel_logins_hash_two_at_a_time_in_bounded_memory(web_appliance):
    from web.accounts import HASH_MEMORY_KIB, Accounts

    config, data, _ = web_appliance
    accounts = Accounts(data / "web")
    accounts.add_user("boss", PASSWORD, "admin", None)
    for i in range(20):
        accounts.add_user(f"clerk{i}", PASSWORD, "staff", None)
    accounts.close()
    process = subprocess.Popen([*CALLREC, "web", "--config", str(config)], cwd=ROOT, stderr=subprocess.DEVNULL)
    port = https_port(config)
    try:
        assert wait_for(lambda: _answers(port), 30)
        assert log_in(port, "boss", PASSWORD) == 302                  # one login first: the code is warm
        before = peak_rss_mb(process.pid)
        statuses = []
        # Twenty computers of the shop (twenty addresses) log in at once.
        threads = [threading.Thread(target=lambda i=i: statuses.append(log_in(port, f"clerk{i}", PASSWORD, f"127.0.0.{i + 2}")))
                   for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        growth = peak_rss_mb(process.pid) - before
    finally:
        process.terminate()
        process.wait(15)
    print(f"peak RSS growth over 20 parallel logins: {growth:.1f} MB (one hash: {HASH_MEMORY_KIB / 1024:.0f} MiB)")
    assert statuses == [302] * 20
    # Two hashes at once: about 2 × 19 MiB; eight server threads hashing at once would need 150 MiB.
    assert growth < 3 * HASH_MEMORY_KIB / 1024 + 10, growth


def _answers(port: int) -> bool:
    try:
        return healthz_s(port) >= 0
    except OSError:
        return False


def x509_text(pem: Path) -> str:
    return subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(pem)], capture_output=True, text=True,
                          check=True).stdout


def test_the_certificate_names_the_box_carries_server_auth_and_chains_to_a_constrained_authority(tmp_path):
    from web.certificate import CA_NAME, CERT_NAME, ensure_certificate, lan_addresses

    cert, _key, issued = ensure_certificate(tmp_path, "callrec.local")
    assert issued
    text = x509_text(cert)
    assert "TLS Web Server Authentication" in text
    for name in ("DNS:callrec.local", "DNS:localhost", f"DNS:{socket.gethostname()}.local", "IP Address:127.0.0.1"):
        assert name in text, name
    assert all(f"IP Address:{a}" in text for a in lan_addresses() if ":" not in a)
    assert "URI:http://callrec.local/ca.crl" in text
    lasts = subprocess.run(["openssl", "x509", "-noout", "-checkend", str(825 * 86400), "-in", str(cert)],
                           capture_output=True, text=True)
    assert lasts.returncode == 1, "valid past 825 days"
    authority = x509_text(tmp_path / CA_NAME)
    assert "CA:TRUE, pathlen:0" in authority and "Permitted" in authority and "DNS:local" in authority
    verified = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / CA_NAME), "-purpose", "sslserver",
                               str(cert)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # Asked again: the same certificate. A new name: a new one from the same authority, the old one revoked.
    first = cert.read_bytes()
    assert ensure_certificate(tmp_path, "callrec.local")[2] is False and cert.read_bytes() == first
    assert ensure_certificate(tmp_path, "recorder.local")[2] is True
    assert subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / CA_NAME), str(tmp_path / CERT_NAME)],
                          capture_output=True).returncode == 0
    revoked = subprocess.run(["openssl", "crl", "-inform", "DER", "-noout", "-text", "-in", str(tmp_path / "ca.crl")],
                             capture_output=True, text=True, check=True).stdout
    old_serial = re.search(r"Serial Number:\s*\n?\s*([0-9a-fA-F:]+)", x509_text_of(first)).group(1).replace(":", "")
    assert old_serial.upper().lstrip("0") in revoked.replace(":", "").upper()


def x509_text_of(pem: bytes) -> str:
    return subprocess.run(["openssl", "x509", "-noout", "-text"], input=pem, capture_output=True, check=True).stdout.decode()


def own_certificate(folder: Path) -> tuple[bytes, bytes]:
    """A certificate and key as a shop's IT would bring them (here: self-made with openssl)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(folder / "own.key"), "-out", str(folder / "own.crt"), "-days", "90",
                    "-subj", "/CN=recorder.shop.example", "-addext", "subjectAltName=DNS:recorder.shop.example"],
                   check=True, capture_output=True)
    return (folder / "own.crt").read_bytes(), (folder / "own.key").read_bytes()


def test_an_owner_uploads_their_own_certificate_and_goes_back(web_appliance, tmp_path):
    import io

    from test_web import csrf, login
    from web.server import WebServer

    config, data, _ = web_appliance
    server = WebServer(config)
    server.start()
    try:
        app = server.app
        app.extensions["callrec"].accounts.add_user("admin", PASSWORD, "admin", None)
        admin = login(app, "admin")
        cert, key = own_certificate(tmp_path)
        upload = lambda c, k: admin.post("/settings/certificate", content_type="multipart/form-data", data={  # noqa: E731
            "csrf_token": csrf(admin, "/"), "action": "upload",
            "certificate": (io.BytesIO(c), "own.crt"), "key": (io.BytesIO(k), "own.key")})
        _, other_key = own_certificate(tmp_path)
        refused = upload(cert, other_key)
        assert "the key does not belong to the certificate" in admin.get(refused.location).get_data(as_text=True)
        served = ssl.get_server_certificate(("127.0.0.1", server.web.https_port))
        assert "recorder.shop.example" not in x509_text_of(served.encode())
        assert upload(cert, key).status_code == 302
        served = ssl.get_server_certificate(("127.0.0.1", server.web.https_port))
        assert "recorder.shop.example" in x509_text_of(served.encode())
        assert app.test_client().get("/certificate.crt").data == cert
        admin.post("/settings/certificate", data={"csrf_token": csrf(admin, "/"), "action": "issued"})
        served = ssl.get_server_certificate(("127.0.0.1", server.web.https_port))
        assert "recorder.shop.example" not in x509_text_of(served.encode())
    finally:
        server.stop()


@pytest.mark.skipif(shutil.which("testssl") is None, reason="testssl.sh (Debian package testssl.sh) is not installed")
def test_testssl_finds_nothing_medium_or_worse_but_the_private_chain(served, tmp_path):
    _, config, _ = served
    report = tmp_path / "testssl.json"
    subprocess.run(["testssl", "--quiet", "--color", "0", "--warnings", "off", "-p", "-s", "-P", "-S", "-h", "-U", "-f",
                    "--jsonfile-pretty", str(report), f"https://127.0.0.1:{https_port(config)}"],
                   capture_output=True, timeout=300)
    results = json.loads(report.read_text())["scanResult"][0]
    findings = [item for section in results.values() if isinstance(section, list) for item in section
                if isinstance(item, dict) and "severity" in item]
    assert len(findings) > 50                       # it did run its checks
    serious = [(f["id"], f["severity"], f["finding"]) for f in findings
               if f["severity"] in ("MEDIUM", "HIGH", "CRITICAL") and f["id"] != "cert_chain_of_trust"]
    assert serious == []


def test_a_conditional_request_gets_a_bare_not_modified(served):
    _, config, _ = served
    connection = http.client.HTTPSConnection("127.0.0.1", https_port(config), timeout=10, context=insecure())
    connection.request("GET", "/static/app.js")
    first = connection.getresponse()
    assert first.status == 200 and first.read() and len(first.headers.get_all("Date")) == 1
    connection.request("GET", "/static/app.js", headers={"If-None-Match": first.getheader("ETag")})
    again = connection.getresponse()
    assert again.status == 304 and again.read() == b""
    connection.close()
