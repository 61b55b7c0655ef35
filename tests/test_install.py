"""The installer as a technician runs it: `sudo ./install.sh` from a clone of the repository, in a
clean Debian bookworm root made by debootstrap (Raspberry Pi OS Lite is bookworm with systemd),
entered with chroot. There systemd is not running, as in any chroot: the installer enables the
units and leaves starting them to the next boot. Then a second run, an upgrade over an edited
configuration, data_dir moved to a disk of its own, systemd's own checks of the units, a boot of
that root with systemd-nspawn (the services running hardened, the installer run again with systemd
up) and the uninstaller.

The base root is built once and kept as a tarball in /var/cache/callrec-test (about 30 s to
build); Debian packages and PyPI downloads are cached there too, between runs."""

import fcntl
import hashlib
import os
import re
import shlex
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from appliance import __version__
from appliance.config import load_config
from appliance.lines import card_id, usb_sound_cards

REPO = Path(__file__).resolve().parent.parent
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = "systemd,udev,dbus"     # what Raspberry Pi OS Lite has; the installer brings the rest
CACHE = Path("/var/cache/callrec-test")
UNITS = ("callrec-signer.service", "callrec-recorder.service", "callrec-web.service")
SOURCE_IN_ROOT = "/root/callrec"    # the technician's clone
ELSEWHERE = "/srv/call recordings"      # data_dir on a disk of its own, named as a disk's label may be
# Relative to the config's folder (/etc/callrec), as the recorder reads it.
ELSEWHERE_IN_CONFIG = 'data_dir = "../../srv/call recordings"'
DROP_IN = "etc/systemd/system/{unit}.d/50-callrec-data-dir.conf"
# Not the installer's business: kernel filesystems, caches, logs, what the program itself writes.
NOT_COMPARED = ("proc", "sys", "dev", "run", "tmp", "var/cache", "var/log", "var/lib/apt/lists",
                "root/.cache", "var/lib/callrec/", f"{ELSEWHERE[1:]}/")

needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("debootstrap") is None
                                or shutil.which("unshare") is None,
                                reason="needs root, debootstrap and unshare (scripts/setup-env --test)")

# Enters ROOT in a mount namespace of its own: the mounts vanish with it, whatever happens.
ENTER_ROOT = r"""
root=$1
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t sysfs sysfs "$root/sys"
mount -t tmpfs tmpfs "$root/run"
mount -t tmpfs tmpfs "$root/tmp"
mount --bind "$2/apt-archives" "$root/var/cache/apt/archives"
mount --bind "$2/pip" "$root/root/.cache/pip"
# pip trusts what the host trusts (a proxy on the way to PyPI may have its own authority).
ca=()
host_ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
if [ -f "$host_ca" ]; then cp "$host_ca" "$root/tmp/host-ca.crt"; ca=(PIP_CERT=/tmp/host-ca.crt); fi
exec chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 TERM=dumb "${ca[@]}" /bin/bash -euc "$3"
"""


# Booted with systemd-nspawn, the root runs this once the services are started, then powers off.
PROBE = r"""#!/bin/sh
out=/root/probe
mkdir -p $out
for i in $(seq 60); do systemctl is-active -q callrec-recorder.service && break; sleep 0.5; done
sleep 10          # several watchdog timeouts
systemctl show -p ActiveState -p NRestarts -p StatusText -p WatchdogUSec callrec-recorder.service > $out/recorder
systemctl show -p ActiveState -p NRestarts callrec-web.service > $out/web
systemctl show -p ActiveState -p NRestarts -p StatusText callrec-signer.service > $out/signer
for unit in recorder web signer; do
    grep -E '^(Uid|CapEff|NoNewPrivs|Seccomp):' /proc/$(systemctl show -p MainPID --value callrec-$unit)/status > $out/$unit.status
done
ls /run/callrec > $out/run
# data_dir is on a disk of its own since before the boot.
systemctl show -p ReadWritePaths -p RequiresMountsFor callrec-recorder.service callrec-web.service > $out/sandbox
stat -c '%U %n' "/srv/call recordings/catalogue.db" "/srv/call recordings/spool" > $out/data 2>&1
ls -A /var/lib/callrec > $out/default.data
cd /root/callrec
./install.sh > $out/install.again 2>&1 || echo "exit $?" >> $out/install.again
echo "# changed" >> systemd/callrec-web.service
./install.sh > $out/install.changed 2>&1 || echo "exit $?" >> $out/install.changed
systemctl is-active callrec-recorder.service callrec-web.service > $out/active.after
# data_dir back to the default; then elsewhere again, and the doctor before install.sh runs again.
# (Rewritten in place: the file keeps its owner and mode.)
config=/etc/callrec/appliance.toml
grep -v '^data_dir = ' $config > /tmp/config; cat /tmp/config > $config
./install.sh > $out/install.default 2>&1 || echo "exit $?" >> $out/install.default
systemctl show -p ReadWritePaths callrec-recorder.service > $out/sandbox.default
sed 's|^\[recorder\]$|&\ndata_dir = "../../srv/call recordings"|' $config > /tmp/config; cat /tmp/config > $config
callrec doctor --seconds 0.5 > $out/doctor.forgotten 2>&1
./install.sh > $out/install.elsewhere 2>&1 || echo "exit $?" >> $out/install.elsewhere
systemctl stop callrec-recorder.service
systemctl show -p Result callrec-recorder.service > $out/recorder.stopped
journalctl -b -u callrec-recorder -u callrec-web -u callrec-signer > $out/journal
systemctl poweroff
"""
PROBE_UNIT = """[Unit]
After=callrec-recorder.service callrec-web.service
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/probe
"""
# No GPIO or sound card in a container: the mock pins, and a card that is missing (retried). A
# short watchdog timeout, so that the probe sees the recorder outlive several. Before the start,
# in the same sandbox, whether the clock's state can be read (-1 with errno 1 if not).
RECORDER_IN_A_CONTAINER = """[Service]
Environment=GPIOZERO_PIN_FACTORY=mock
WatchdogSec=3
ExecStartPre=/opt/callrec/venv/bin/python -c "import ctypes; libc = ctypes.CDLL(None, use_errno=True); \
    print('adjtimex gives', libc.adjtimex(ctypes.create_string_buffer(512)), 'errno', ctypes.get_errno())"
"""


def base_tarball() -> Path:
    """The clean base root as a tarball, built with debootstrap the first time."""
    key = hashlib.sha256(f"{SUITE} minbase {BASE_PACKAGES} {MIRROR}".encode()).hexdigest()[:10]
    tarball = CACHE / f"debian-{SUITE}-{key}.tar"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)        # another test run may be building it
        if not tarball.exists():
            build = CACHE / f"build-{os.getpid()}"
            shutil.rmtree(build, ignore_errors=True)
            subprocess.run(["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE,
                            str(build), MIRROR], check=True, capture_output=True, timeout=900)
            for deb in (build / "var/cache/apt/archives").glob("*.deb"):
                deb.unlink()
            subprocess.run(["tar", "-C", str(build), "--numeric-owner", "-cf", f"{tarball}.part", "."], check=True)
            os.rename(f"{tarball}.part", tarball)
            shutil.rmtree(build)
    return tarball


def make_root(folder: Path) -> Path:
    """A fresh root from the base, with the technician's clone of this repository in it."""
    root = folder / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xpf", str(base_tarball())], check=True)
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    (root / "root/.cache/pip").mkdir(parents=True)
    for cache in ("apt-archives/partial", "pip"):
        (CACHE / cache).mkdir(parents=True, exist_ok=True)
    # What a clone holds: the tracked files and the new ones, not what git ignores (.venv, ...).
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, check=True, capture_output=True).stdout
    existing = b"\0".join(f for f in files.split(b"\0") if f and (REPO / os.fsdecode(f)).exists())
    clone = root / SOURCE_IN_ROOT.lstrip("/")
    clone.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(REPO), "--null", "-T", "-", "-cf", "-"], input=existing, check=True,
                   stdout=open(clone.parent / "clone.tar", "wb"))
    subprocess.run(["tar", "-C", str(clone), "-xf", str(clone.parent / "clone.tar")], check=True)
    (clone.parent / "clone.tar").unlink()
    return root


def in_root(root: Path, script: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a bash script as root inside `root`."""
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-euc", ENTER_ROOT,
                             "enter-root", str(root), str(CACHE), script],
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"in the root: {script}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def boot(root: Path) -> dict[str, str] | None:
    """Boot the root with systemd (systemd-nspawn, on a network of its own) and return what the
    probe found; None where systemd-nspawn is missing."""
    if shutil.which("systemd-nspawn") is None:
        return None
    probe = root / "usr/local/sbin/probe"
    probe.write_text(PROBE)
    probe.chmod(0o755)
    (root / "etc/systemd/system/probe.service").write_text(PROBE_UNIT)
    (root / "etc/systemd/system/multi-user.target.wants/probe.service").symlink_to("/etc/systemd/system/probe.service")
    drop_in = root / "etc/systemd/system/callrec-recorder.service.d/container.conf"
    drop_in.parent.mkdir(exist_ok=True)         # the installer's may be there
    drop_in.write_text(RECORDER_IN_A_CONTAINER)
    # CAP_SYS_TIME: without it systemd-nspawn forbids the @clock system calls to the whole
    # container, even adjtimex(2) to read, unlike a real machine; the units drop it themselves.
    subprocess.run(["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--private-network",
                    "--capability=CAP_SYS_TIME", "--console=pipe", "--directory", str(root), "--boot"],
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=180)
    found = {path.name: path.read_text() for path in (root / "root/probe").iterdir()}
    drop_in.unlink()
    if not any(drop_in.parent.iterdir()):
        drop_in.parent.rmdir()
    return found


def listing(root: Path) -> dict[str, tuple]:
    """Every path of the root with its type, mode, owner and content (checksum or link target)."""
    found = {}
    for folder, dirs, files in os.walk(root):
        rel_folder = os.path.relpath(folder, root)
        dirs[:] = [d for d in dirs if d != "__pycache__"
                   and not os.path.normpath(os.path.join(rel_folder, d)).startswith(NOT_COMPARED)]
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.normpath(os.path.join(rel_folder, name))
            if rel.startswith(NOT_COMPARED) and name in files:
                continue
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                content = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                content = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            else:
                content = None
            found[rel] = (stat.filemode(info.st_mode), info.st_uid, info.st_gid, content)
    return found


def differences(before: dict, after: dict) -> list[str]:
    """What changed between two listings, one line per path."""
    return sorted([f"- {p}" for p in before.keys() - after.keys()] + [f"+ {p}" for p in after.keys() - before.keys()]
                  + [f"~ {p}: {before[p]} -> {after[p]}" for p in before.keys() & after.keys() if before[p] != after[p]])


def steps(output: str) -> dict[str, list[str]]:
    """The installer's report: what each step said."""
    said = {}
    for line in output.splitlines():
        if match := re.match(r"^([\w. ()-]+):\s+(.*)$", line):
            said.setdefault(match.group(1), []).append(match.group(2))
    return said


def owner(root: Path, rel: str) -> tuple[str, str, str]:
    """Mode, user and group of a path in the root, as `stat` shows them there."""
    out = in_root(root, f"stat -c '%a %U %G' {shlex.quote(rel)}").stdout.split()
    return tuple(out)


def with_data_dir(config: str, line: str) -> str:
    """The config's text with `line` (e.g. a data_dir) first in its [recorder] table."""
    assert "[recorder]\n" in config
    return config.replace("[recorder]\n", f"[recorder]\n{line}\n", 1)


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """Everything, once: install, install again, upgrade over an edited config, uninstall, purge.
    Returns what each stage left to check."""
    started = time.monotonic()
    root = make_root(tmp_path_factory.mktemp("install"))
    prepared = time.monotonic()
    seen = {"root": root, "timings": {"fresh root": prepared - started}}
    try:
        yield from _tell(root, seen)
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)


def _tell(root: Path, seen: dict):
    timings = seen["timings"]
    install = f"cd {SOURCE_IN_ROOT} && ./install.sh"

    (root / "etc/hostname").write_text("raspberrypi\n")     # as Raspberry Pi OS ships
    t = time.monotonic()
    seen["first"] = in_root(root, install).stdout
    timings["first install"] = time.monotonic() - t
    seen["files"] = {rel: owner(root, rel) for rel in (
        "/etc/callrec", "/etc/callrec/appliance.toml", "/etc/callrec/notice-en.wav", "/etc/callrec/secrets",
        "/var/lib/callrec", "/var/lib/callrec/keys/store.pub", "/var/lib/callrec/web/keyslots.json",
        "/var/lib/callrec/keys/device-ed25519.sealed",
        "/opt/callrec/venv/bin/callrec", "/usr/local/bin/callrec", *(f"/etc/systemd/system/{u}" for u in UNITS))}
    seen["user"] = in_root(root, "id callrec; getent passwd callrec").stdout
    seen["web user"] = in_root(root, "id -nG callrec-web").stdout.split()
    seen["host name"] = (root / "etc/hostname").read_text().strip()
    seen["announcement"] = (root / "etc/avahi/services/callrec.service").read_text()
    seen["enabled"] = {unit: os.readlink(root / "etc/systemd/system/multi-user.target.wants" / unit)
                       if (root / "etc/systemd/system/multi-user.target.wants" / unit).is_symlink() else None
                       for unit in UNITS}
    seen["version"] = in_root(root, "callrec --version").stdout
    seen["udev rules"] = {name: (root / "etc/udev/rules.d" / name).read_text()
                          for name in ("85-callrec-sound.rules", "85-callrec-modem.rules")}
    seen["config loads"] = in_root(root, "/opt/callrec/venv/bin/python -c "
                                   "'from appliance.config import load_config; "
                                   "print(load_config(\"/etc/callrec/appliance.toml\").line[0].capture)'").stdout
    units = " ".join(f"/etc/systemd/system/{u}" for u in UNITS)
    verify = in_root(root, f"systemd-analyze verify {units}", check=False)
    seen["verify"] = (verify.returncode, verify.stdout + verify.stderr)
    seen["security"] = in_root(root, f"systemd-analyze security --offline=true {units}").stdout

    before = listing(root)
    t = time.monotonic()
    seen["second"] = in_root(root, install).stdout
    timings["second install"] = time.monotonic() - t
    seen["second changes"] = differences(before, listing(root))

    # The technician edits the config; then an upgrade ships a new template and a new journald
    # drop-in (which nobody edited).
    config = root / "etc/callrec/appliance.toml"
    seen["edited"] = config.read_text().replace("preroll_s = 2.0", "preroll_s = 3.0") + "# the shop's own\n"
    config.write_text(seen["edited"])
    clone = root / SOURCE_IN_ROOT.lstrip("/")
    for shipped in ("firmware-config/appliance.toml.template", "firmware-config/journald.conf"):
        with open(clone / shipped, "a") as f:
            f.write("# a newer version\n")
    t = time.monotonic()
    seen["upgrade"] = in_root(root, install).stdout
    timings["upgrade"] = time.monotonic() - t
    seen["config after upgrade"] = config.read_text()
    seen["dist"] = (root / "etc/callrec/appliance.toml.dist").read_text()
    seen["journald"] = (root / "etc/systemd/journald.conf.d/50-callrec.conf").read_text()

    t = time.monotonic()
    _move_data_dir(root, seen, install)
    timings["data_dir elsewhere"] = time.monotonic() - t

    t = time.monotonic()
    seen["booted"] = boot(root)
    timings["boot with systemd"] = time.monotonic() - t

    seen["uninstall"] = in_root(root, f"cd {SOURCE_IN_ROOT} && ./uninstall.sh").stdout
    seen["after uninstall"] = {rel: (root / rel).exists() for rel in (
        "opt/callrec", "usr/local/bin/callrec", "etc/callrec/appliance.toml", "var/lib/callrec", ELSEWHERE[1:],
        *(f"etc/systemd/system/{u}" for u in UNITS), *(f"etc/systemd/system/{u}.d" for u in UNITS),
        *(f"etc/systemd/system/multi-user.target.wants/{u}" for u in UNITS))}
    seen["user after uninstall"] = in_root(root, "getent passwd callrec", check=False).returncode
    seen["purge"] = in_root(root, f"cd {SOURCE_IN_ROOT} && ./uninstall.sh --purge").stdout
    seen["after purge"] = {rel: (root / rel).exists()
                           for rel in ("etc/callrec", "var/lib/callrec", ELSEWHERE[1:], "srv")}
    seen["user after purge"] = in_root(root, "getent passwd callrec", check=False).returncode
    print("\n" + ", ".join(f"{what} {seconds:.1f} s" for what, seconds in timings.items()))
    yield seen


def _move_data_dir(root: Path, seen: dict, install: str):
    """The technician puts the recordings on a disk of their own (data_dir), runs the installer
    twice, then tries what it refuses; data_dir stays elsewhere for the boot."""
    config = root / "etc/callrec/appliance.toml"
    edited = config.read_text()
    config.write_text(with_data_dir(edited, ELSEWHERE_IN_CONFIG))
    seen["elsewhere"] = in_root(root, install).stdout
    seen["elsewhere folder"] = owner(root, ELSEWHERE)
    drop_ins = {unit: DROP_IN.format(unit=unit) for unit in UNITS}
    seen["drop-ins"] = {unit: ((root / path).read_text(), owner(root, f"/{path}")) for unit, path in drop_ins.items()}
    units = " ".join(f"/etc/systemd/system/{u}" for u in UNITS)
    verify = in_root(root, f"systemd-analyze verify {units}", check=False)
    seen["verify with drop-ins"] = (verify.returncode, verify.stdout + verify.stderr)
    before = listing(root)
    seen["elsewhere again"] = in_root(root, install).stdout
    seen["elsewhere again changes"] = differences(before, listing(root))

    refused = {}
    config.write_text(with_data_dir(edited, 'data_dri = "/srv/callrec"'))
    refused["a key that does not load"] = in_root(root, install, check=False)
    shared = root / "srv/shared"
    shared.mkdir()
    (shared / "notes.txt").write_text("the shop's own\n")
    config.write_text(with_data_dir(edited, 'data_dir = "/srv/shared"'))
    refused["someone else's files"] = in_root(root, install, check=False)
    seen["someone else's folder after"] = owner(root, "/srv/shared")
    fstab = root / "etc/fstab"
    fstab_before = fstab.read_text()
    fstab.write_text(fstab_before + "LABEL=CALLREC /mnt/usb ext4 defaults,nofail 0 2\n")
    (root / "mnt/usb").mkdir(parents=True, exist_ok=True)
    config.write_text(with_data_dir(edited, 'data_dir = "/mnt/usb/callrec"'))
    refused["a disk not mounted"] = in_root(root, install, check=False)
    seen["made under the mount point"] = (root / "mnt/usb/callrec").exists()
    fstab.write_text(fstab_before)
    seen["refused"] = {what: (result.returncode, result.stderr) for what, result in refused.items()}
    config.write_text(with_data_dir(edited, ELSEWHERE_IN_CONFIG))


@needs_root
def test_a_first_run_installs_everything_and_enables_the_units(story):
    said = steps(story["first"])
    assert said["Debian packages"][0].startswith("installed python3 python3-venv")
    assert said["user"] == ["created group gpio; created group callrec; created user callrec in groups audio, gpio, dialout; "
                            "created user callrec-web in group callrec"]
    assert said["program"][0].startswith(f"installed callrec {__version__} in /opt/callrec/venv (not a Raspberry Pi")
    for unit in UNITS:
        assert said[f"enable {unit.removesuffix('.service')}"] == [f"enabled {unit} (starts at every boot)"]
    assert said["start"] == ["nothing changed (systemd is not running here, e.g. a chroot: the services start at the next boot)"]
    assert story["version"].strip() == f"callrec, version {__version__}"
    # Each USB sound card and modem named by its USB port (tests/test_lines.py runs the rules).
    assert story["udev rules"] == {name: (REPO / "firmware-config" / name).read_text() for name in story["udev rules"]}
    # The template's line is on the one-card names; with the only USB sound card present (the
    # chroot sees this machine's /sys) it takes that card's port names, else they stay.
    cards = usb_sound_cards()
    if len(cards) == 1:
        (port,) = cards
        assert said["lines"] == [f"line shop: sound card in USB port {port} (callrec_capture:{card_id(port)})"]
        assert story["config loads"].strip() == f"callrec_capture:{card_id(port)}"
    else:
        assert said["lines"] == [f"nothing changed (1 line(s) on the names of one card, {len(cards)} USB sound "
                                 "card(s) present: run `sudo callrec doctor --identify` with the cards plugged in)"]
        assert story["config loads"].strip() == "callrec_capture"
    assert story["enabled"] == {u: f"/etc/systemd/system/{u}" for u in UNITS}
    # The name on the sticker: the box answers to callrec.local and announces its web UI.
    assert story["host name"] == "callrec" and said["host name"][0].startswith("named the box callrec")
    assert "<type>_https._tcp</type>" in story["announcement"] and "<port>443</port>" in story["announcement"]
    assert "  https://callrec.local/" in story["first"]


@needs_root
def test_files_user_and_permissions_are_as_the_services_need_them(story):
    files = story["files"]
    assert files["/etc/callrec"] == ("2770", "root", "callrec")
    assert files["/etc/callrec/appliance.toml"] == ("660", "root", "callrec")
    assert files["/etc/callrec/notice-en.wav"] == ("640", "root", "callrec")
    assert files["/var/lib/callrec"] == ("770", "callrec", "callrec")
    assert files["/opt/callrec/venv/bin/callrec"][0] == "755"
    assert files["/usr/local/bin/callrec"] == ("755", "root", "root")
    for unit in UNITS:
        assert files[f"/etc/systemd/system/{unit}"] == ("644", "root", "root")
    uid, passwd = story["user"].splitlines()
    assert re.search(r"groups=\d+\(callrec\)", uid)
    assert {"audio", "gpio", "dialout"} <= set(re.findall(r"\d+\(([a-z]+)\)", uid.split("groups=")[1]))
    assert passwd.endswith(":/var/lib/callrec:/usr/sbin/nologin")
    assert story["web user"] == ["callrec"]         # the group only: no sound card, GPIO or modem
    assert files["/etc/callrec/secrets"] == ("700", "callrec", "callrec")
    # A new box is sealed before its first call: the recorder's public key, the web UI's key slots.
    assert files["/var/lib/callrec/keys/store.pub"] == ("640", "callrec", "callrec")
    assert files["/var/lib/callrec/keys/device-ed25519.sealed"] == ("600", "callrec", "callrec")
    assert files["/var/lib/callrec/web/keyslots.json"] == ("600", "callrec-web", "callrec")


@needs_root
def test_the_end_shows_the_web_address_and_the_setup_code(story):
    output = story["first"]
    assert re.search(r"^  https://\S+\.local/$", output, re.M)
    code = re.search(r"^One-time setup code \(for the first admin account\): (\S+)$", output, re.M)
    assert steps(output)["sealed store"] == ["recordings and personal data in /var/lib/callrec are sealed from the first call"]
    recovery = re.search(r"^Recovery key of the store .*\n.*\n  ([A-Z2-7-]{50,})$", output, re.M)
    assert recovery and recovery.group(1) not in story["second"]     # shown once
    assert code or "run `sudo callrec setup-code` once the web UI is up" in output
    if code:
        assert code.group(1) in story["second"]     # the same code until it is used


@needs_root
def test_a_second_run_changes_nothing(story):
    said = steps(story["second"])
    for step, results in said.items():
        if step not in ("Web UI", "One-time setup code (for the first admin account)", "Setup code"):
            assert all(r.startswith("nothing changed") for r in results), (step, results)
    assert "this run changed nothing" in story["second"]
    assert story["second changes"] == []


@needs_root
def test_an_upgrade_keeps_an_edited_config_and_upgrades_what_nobody_edited(story):
    said = steps(story["upgrade"])
    assert story["config after upgrade"] == story["edited"]
    assert said["config"] == ["kept your edited /etc/callrec/appliance.toml; the new version is /etc/callrec/appliance.toml.dist"]
    assert story["dist"].endswith("# a newer version\n")
    assert story["journald"].endswith("# a newer version\n")
    assert "upgraded /etc/systemd/journald.conf.d/50-callrec.conf (it was not edited)" in said["journal"]


@needs_root
def test_uninstall_keeps_the_recordings_unless_purged(story):
    gone = story["after uninstall"]
    assert gone == {"opt/callrec": False, "usr/local/bin/callrec": False, "etc/callrec/appliance.toml": True,
                    "var/lib/callrec": True, ELSEWHERE[1:]: True, **{f"etc/systemd/system/{u}": False for u in UNITS},
                    **{f"etc/systemd/system/{u}.d": False for u in UNITS},
                    **{f"etc/systemd/system/multi-user.target.wants/{u}": False for u in UNITS}}
    assert "kept the recordings and the catalogue in /var/lib/callrec" in story["uninstall"]
    assert f"kept the recordings and the catalogue in {ELSEWHERE} (" in story["uninstall"]
    assert story["user after uninstall"] == 0
    assert story["after purge"] == {"etc/callrec": False, "var/lib/callrec": False, ELSEWHERE[1:]: False, "srv": True}
    assert (f"removed every recording in data_dir {ELSEWHERE} (from [recorder] data_dir in /etc/callrec/appliance.toml)"
            in story["purge"])
    assert story["user after purge"] == 2          # getent: no such user


@needs_root
def test_data_dir_elsewhere_gets_its_folder_and_a_drop_in_per_unit_and_a_second_run_changes_nothing(story):
    said = steps(story["elsewhere"])
    assert said["data_dir"] == [f"made {ELSEWHERE} callrec:callrec 0770"]
    assert story["elsewhere folder"] == ("770", "callrec", "callrec")
    for unit in UNITS:
        drop_in = DROP_IN.format(unit=unit)
        assert said[f"drop-in {unit.removesuffix('.service')}"] == [f"installed /{drop_in}"]
        text, owned = story["drop-ins"][unit]
        assert owned == ("644", "root", "root")
        assert text.startswith("# Written by install.sh for [recorder] data_dir in /etc/callrec/appliance.toml")
        assert re.findall(r"^\w+=.*$", text, re.M) == [f'RequiresMountsFor="{ELSEWHERE}"', f'ReadWritePaths="{ELSEWHERE}"']
    assert story["verify with drop-ins"] == (0, "")
    again = steps(story["elsewhere again"])
    assert again["data_dir"] == ["nothing changed"]
    assert again["drop-in callrec-recorder"] == again["drop-in callrec-web"] == ["nothing changed"]
    assert "this run changed nothing" in story["elsewhere again"]
    assert story["elsewhere again changes"] == []


@needs_root
def test_the_installer_refuses_a_data_dir_it_cannot_set_up_and_says_why(story):
    refused = story["refused"]
    status, said = refused["a key that does not load"]
    assert status == 1
    assert ("install.sh: the data folder ([recorder] data_dir) is not known: invalid configuration in "
            "/etc/callrec/appliance.toml:\n  recorder.data_dri: unknown key") in said
    status, said = refused["someone else's files"]
    assert status == 1
    assert ("data_dir /srv/shared already holds files that are not callrec's (e.g. /srv/shared/notes.txt, "
            "owned by root), and I change no one else's files") in said
    assert story["someone else's folder after"] == ("755", "root", "root")
    status, said = refused["a disk not mounted"]
    assert status == 1
    assert ("data_dir /mnt/usb/callrec is on the disk that /etc/fstab mounts on /mnt/usb, which is not mounted: "
            "plug it in and mount it (sudo mount /mnt/usb)") in said
    assert not story["made under the mount point"]


@needs_root
def test_systemd_finds_nothing_wrong_with_the_installed_units(story):
    assert story["verify"] == (0, "")
    scores = dict(re.findall(r"Overall exposure level for (\S+): (\d+\.\d+)", story["security"]))
    print(f"\nexposure: {scores}")
    assert set(scores) == set(UNITS)
    assert all(float(score) <= 2.0 for score in scores.values()), scores


@pytest.fixture
def booted(story):
    """What the root showed when booted with systemd (the test is skipped without systemd-nspawn)."""
    if story["booted"] is None:
        pytest.skip("needs systemd-nspawn (Debian: systemd-container)")
    return story["booted"]


@needs_root
def test_booted_the_services_run_hardened_and_the_recorder_feeds_its_watchdog(booted):
    recorder = dict(line.split("=", 1) for line in booted["recorder"].splitlines())
    assert recorder["ActiveState"] == "active" and recorder["NRestarts"] == "0", booted["journal"]
    assert recorder["WatchdogUSec"] == "3s"
    assert recorder["StatusText"] == "recording 1 line(s)"
    assert "ActiveState=active" in booted["web"] and "NRestarts=0" in booted["web"], booted["journal"]
    assert "ActiveState=active" in booted["signer"] and "StatusText=signing" in booted["signer"], booted["journal"]
    assert {"live.json", "signer.sock", "control.sock"} <= set(booted["run"].split())
    uid = re.search(r"^Uid:\s+(\d+)", booted["recorder.status"], re.M).group(1)
    for unit in ("recorder", "web", "signer"):
        status = dict(re.findall(r"^(\w+):\s+(\S+)", booted[f"{unit}.status"], re.M))
        # The recorder and the signer as callrec; the web UI as callrec-web, which may not read the device key.
        assert (status["Uid"] == uid) == (unit != "web") and status["Uid"] != "0"
        assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
        assert int(status["CapEff"], 16) == (1 << 10 if unit == "web" else 0)      # CAP_NET_BIND_SERVICE
    assert "cannot open capture device callrec_capture" in booted["journal"]
    assert re.search(r"adjtimex gives [0-5] errno 0", booted["journal"]), booted["journal"]
    assert booted["recorder.stopped"].strip() == "Result=success"


@needs_root
def test_booted_the_recorder_writes_to_data_dir_elsewhere_through_the_hardened_unit(booted):
    for unit in booted["sandbox"].strip().split("\n\n"):       # as systemd read the drop-ins
        shown = dict(line.split("=", 1) for line in unit.splitlines())
        assert ELSEWHERE in shlex.split(shown["ReadWritePaths"]), booted["sandbox"]
        assert ELSEWHERE in shlex.split(shown["RequiresMountsFor"]), booted["sandbox"]
    assert booted["data"].splitlines() == [f"callrec {ELSEWHERE}/catalogue.db", f"callrec {ELSEWHERE}/spool"]
    assert "catalogue.db" not in booted["default.data"].split()
    assert f"✔ data folder {ELSEWHERE} is writable by callrec" in booted["install.again"]


@needs_root
def test_with_systemd_data_dir_back_to_the_default_then_elsewhere_again(booted):
    default = steps(booted["install.default"])
    for unit in UNITS:
        name = unit.removesuffix(".service")
        assert default[f"drop-in {name}"] == [f"removed /{DROP_IN.format(unit=unit)} (data_dir is /var/lib/callrec again)"]
        assert default[f"start {name}"] == [f"restarted {unit}"]
    assert booted["sandbox.default"].strip() == "ReadWritePaths=/var/lib/callrec"
    # data_dir changed again, the installer not run yet: the doctor says what to do.
    assert (f"✘ data folder {ELSEWHERE} is read-only for callrec-recorder.service and callrec-web.service "
            "(ProtectSystem=strict without ReadWritePaths= for it) — run `sudo ./install.sh` again after "
            "changing data_dir") in booted["doctor.forgotten"]
    elsewhere = steps(booted["install.elsewhere"])
    assert elsewhere["start callrec-recorder"] == ["restarted callrec-recorder.service"], booted["install.elsewhere"]
    assert f"✔ data folder {ELSEWHERE} is writable by callrec" in booted["install.elsewhere"]


@needs_root
def test_with_systemd_running_the_installer_starts_what_changed(booted):
    again = steps(booted["install.again"])
    assert again["start callrec-recorder"] == again["start callrec-web"] == ["nothing changed"], booted["install.again"]
    assert "this run changed nothing" in booted["install.again"]
    assert "Checking the appliance (sudo callrec doctor):" in booted["install.again"]
    assert "service callrec-recorder.service is active" in booted["install.again"]
    changed = steps(booted["install.changed"])
    assert changed["unit callrec-web"] == ["installed /etc/systemd/system/callrec-web.service"]
    assert changed["start callrec-recorder"] == ["restarted callrec-recorder.service"], booted["install.changed"]
    assert changed["start callrec-web"] == ["restarted callrec-web.service"]
    assert booted["active.after"].split() == ["active", "active"]
    assert "stopping: finalising calls in progress" in booted["journal"]


def test_the_config_template_loads_as_the_recorder_reads_it(tmp_path):
    template = REPO / "firmware-config/appliance.toml.template"
    (tmp_path / "appliance.toml").write_text(template.read_text())
    (tmp_path / "notice-en.wav").write_bytes((REPO / "appliance/demo/notice-en.wav").read_bytes())
    config = load_config(tmp_path / "appliance.toml")
    assert config.recorder.runtime_dir == Path("/run/callrec")
    assert config.recorder.data_dir == Path("/var/lib/callrec")
    [line] = config.line
    assert (line.capture, line.playback, line.hook_pin, line.ring_pin) == ("callrec_capture", "callrec_playback", 17, 27)
    assert line.notice == tmp_path / "notice-en.wav"
    assert line.outgoing == "announce"              # a new installation tells the called party too
    # Every commented-out key is a real key: uncommented, the file still loads.
    uncommented = re.sub(r"^# ([a-z_]+ = .*)$", r"\1", template.read_text(), flags=re.M)
    uncommented = re.sub(r"^# (\[purpose\.training\])", r"\1", uncommented, flags=re.M)
    uncommented = uncommented.replace('secret_file = "webhook-secret"', f'secret_file = "{tmp_path}/secret"')
    uncommented = re.sub(r"^# (\[webhook\]|\[alarms\]|\[privacy\])", r"\1", uncommented, flags=re.M)
    uncommented = uncommented.replace('password_file = "alarm-mail.password"', f'password_file = "{tmp_path}/secret"')
    (tmp_path / "secret").write_text("s3cret\n")
    (tmp_path / "appliance.toml").write_text(uncommented)
    everything = load_config(tmp_path / "appliance.toml")
    assert everything.line[0].modem == "/dev/callrec-modem" and everything.webhook is not None
    assert everything.alarms.to == ["owner@shop.example"] and everything.alarms.port == 587
    assert everything.privacy.address == "Street 1\n1000 City"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (Debian: systemd)")
def test_systemd_analyze_verify_passes_on_the_units(tmp_path):
    # A root with what the units refer to: systemd's own units, kill, and the program's path.
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir()
    shutil.copy("/usr/bin/kill", root / "usr/bin/kill")
    (root / "bin").symlink_to("usr/bin")
    program = root / "opt/callrec/venv/bin/callrec"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(REPO / "systemd" / unit, units / unit)
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *(str(units / u) for u in UNITS)],
                            capture_output=True, text=True)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
