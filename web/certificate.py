"""The web UI's TLS certificate: the appliance's own small certificate authority and a server
certificate it issues, or a certificate and key the owner uploads instead.

The authority (`ca.pem`) is what the shop's computers and phones install and trust once. It may
only vouch for the appliance's own names and for private addresses (X.509 name constraints), so its
key, were it ever stolen, could not impersonate any other site. The server certificate names the
configured host name, the `.local` name the appliance announces over mDNS, `localhost` and every
address the appliance has on its networks; it carries the serverAuth usage and lasts 397 days, the
longest Apple devices accept from an authority installed by hand. `ensure_certificate` issues a new
one when it nears its end or when the appliance's names or addresses change (a new DHCP lease): no
one has to trust anything again. The authority's revocation list (`ca.crl`, served at `/ca.crl`)
names every server certificate it has replaced.
"""

import datetime
import ipaddress
import json
import logging
import os
import socket
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

TLS_DIR = "tls"
CA_NAME, CA_KEY_NAME = "ca.pem", "ca-key.pem"
CERT_NAME, KEY_NAME = "cert.pem", "key.pem"          # what the server presents: issued here, or uploaded
CRL_NAME = "ca.crl"
CRL_DAYS, CRL_RENEW_DAYS = 30, 7
OWN_MARK = "uploaded"                                 # present while the served pair is the owner's own
CA_YEARS = 20
SERVER_DAYS = 397
RENEW_DAYS = 30
PRIVATE_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16",
                    "100.64.0.0/10", "fc00::/7", "fe80::/10", "::1/128")


class CertificateError(ValueError):
    """An uploaded certificate or key that cannot be served, with the reason."""


def lan_addresses() -> list[str]:
    """The appliance's private addresses on its networks (from `ip`; loopback included). Public
    ones are left out: the authority may not vouch for them, and the LAN reaches the box by a
    private address or by name."""
    try:
        found = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, timeout=5).stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return ["127.0.0.1"]
    addresses = {"127.0.0.1"}
    for interface in found:
        for info in interface.get("addr_info", []):
            address = ipaddress.ip_address(info["local"])
            if address.version == 6 and address.is_link_local:        # needs a scope, which URLs carry badly
                continue
            if any(address in ipaddress.ip_network(n) for n in PRIVATE_NETWORKS):
                addresses.add(str(address))
    return sorted(addresses)


def device_names(hostname: str) -> list[str]:
    """The DNS names the server certificate carries."""
    return sorted({hostname, "localhost", socket.gethostname(), f"{socket.gethostname()}.local"})


def _write_private(path: Path, data: bytes) -> None:
    fresh = path.with_suffix(".new")
    fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(fresh, path)


def _write_public(path: Path, data: bytes) -> None:
    fresh = path.with_suffix(".new")
    fresh.write_bytes(data)
    os.replace(fresh, path)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _authority(folder: Path, hostname: str):
    """The appliance's authority (made once): its certificate and key."""
    cert_path, key_path = folder / CA_NAME, folder / CA_KEY_NAME
    if cert_path.is_file() and key_path.is_file():
        return (x509.load_pem_x509_certificate(cert_path.read_bytes()),
                serialization.load_pem_private_key(key_path.read_bytes(), None))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"callrec appliance {socket.gethostname()}"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "callrec appliance")])
    permitted = ([x509.DNSName(n) for n in (hostname, "local", "localhost", socket.gethostname())]
                 + [x509.IPAddress(ipaddress.ip_network(n)) for n in PRIVATE_NETWORKS])
    now = _now()
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256()))
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, certificate.public_bytes(serialization.Encoding.PEM))
    log.info("made the appliance's certificate authority %s", cert_path)
    return certificate, key


def _revocation_list(folder: Path, authority, authority_key, revoke: int | None = None) -> None:
    """Sign the authority's revocation list again, with `revoke` added to the serials it names."""
    path, now = folder / CRL_NAME, _now()
    builder = (x509.CertificateRevocationListBuilder().issuer_name(authority.subject)
               .last_update(now).next_update(now + datetime.timedelta(days=CRL_DAYS)))
    serials = set()
    if path.is_file():
        serials = {entry.serial_number for entry in x509.load_der_x509_crl(path.read_bytes())}
    if revoke is not None:
        serials.add(revoke)
    for serial in sorted(serials):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    _write_public(path, builder.sign(authority_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))


def _revocation_list_fresh(folder: Path) -> bool:
    try:
        crl = x509.load_der_x509_crl((folder / CRL_NAME).read_bytes())
    except (FileNotFoundError, ValueError):
        return False
    return crl.next_update_utc - _now() > datetime.timedelta(days=CRL_RENEW_DAYS)


def _needs_new(cert_path: Path, names: list[str], addresses: list[str]) -> str | None:
    """Why the served certificate must be issued again (None: it is fine)."""
    try:
        current = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (FileNotFoundError, ValueError):
        return "there is none"
    if current.not_valid_after_utc - _now() < datetime.timedelta(days=RENEW_DAYS):
        return "it ends within 30 days"
    san = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if set(san.get_values_for_type(x509.DNSName)) != set(names) or \
            {str(a) for a in san.get_values_for_type(x509.IPAddress)} != set(addresses):
        return "the appliance's names or addresses changed"
    return None


def ensure_certificate(folder: Path, hostname: str) -> tuple[Path, Path, bool]:
    """The certificate (with its chain) and key the server presents, and whether they changed now:
    the owner's own when uploaded, else one issued by the appliance's authority, again when needed."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = folder / CERT_NAME, folder / KEY_NAME
    if (folder / OWN_MARK).exists():
        return cert_path, key_path, False
    names, addresses = device_names(hostname), lan_addresses()
    why = _needs_new(cert_path, names, addresses)
    if why is None:
        if not _revocation_list_fresh(folder):
            _revocation_list(folder, *_authority(folder, hostname))
        return cert_path, key_path, False
    authority, authority_key = _authority(folder, hostname)
    try:
        replaced = x509.load_pem_x509_certificate(cert_path.read_bytes())
        revoke = replaced.serial_number if replaced.issuer == authority.subject else None
    except (FileNotFoundError, ValueError):
        revoke = None
    _revocation_list(folder, authority, authority_key, revoke)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .issuer_name(authority.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(authority_key.public_key()), critical=False)
        .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(f"http://{hostname}/{CRL_NAME}")], relative_name=None,
            reasons=None, crl_issuer=None)]), critical=False)
        .sign(authority_key, hashes.SHA256()))
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, certificate.public_bytes(serialization.Encoding.PEM)
                  + authority.public_bytes(serialization.Encoding.PEM))
    log.info("issued the web UI's certificate %s (%s): %s", cert_path, why, ", ".join(names + addresses))
    return cert_path, key_path, True


def install_own(folder: Path, cert_pem: bytes, key_pem: bytes) -> x509.Certificate:
    """Serve the owner's certificate (with its chain) and key from now on; refused with the reason
    when they do not make a pair, have ended, or are no server certificate."""
    import ssl
    import tempfile

    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
        key = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"not a PEM certificate and unencrypted PEM key ({exc})") from None
    leaf = chain[0]
    if leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise CertificateError("the key does not belong to the certificate")
    if leaf.not_valid_after_utc <= _now():
        raise CertificateError("the certificate has ended")
    with tempfile.TemporaryDirectory() as scratch:          # what the server will do with them
        _write_public(Path(scratch) / "cert.pem", cert_pem)
        _write_private(Path(scratch) / "key.pem", key_pem)
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(Path(scratch) / "cert.pem",
                                                                                Path(scratch) / "key.pem")
        except ssl.SSLError as exc:
            raise CertificateError(f"the TLS library refuses them ({exc.reason or exc})") from None
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_private(folder / KEY_NAME, key_pem)
    _write_public(folder / CERT_NAME, cert_pem)
    (folder / OWN_MARK).touch()
    return leaf


def use_issued(folder: Path, hostname: str) -> None:
    """Go back from the owner's certificate to one issued by the appliance."""
    (folder / OWN_MARK).unlink(missing_ok=True)
    (folder / CERT_NAME).unlink(missing_ok=True)
    ensure_certificate(folder, hostname)


def to_trust(folder: Path) -> Path:
    """The certificate a shop's computers install to trust the web UI: the appliance's authority,
    or the owner's uploaded certificate."""
    return folder / (CERT_NAME if (folder / OWN_MARK).exists() else CA_NAME)
