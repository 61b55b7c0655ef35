"""Shared test helpers: configs, scenarios, running `callrec` as a user would, reading recordings."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from appliance.codec import decode_to_pcm
from appliance.config import RecorderConfig, demo_path

RATE = 8000
PERIOD_FRAMES = RATE * RecorderConfig.model_fields["period_ms"].default // 1000     # the recorder's


def write_config(folder: Path, recorder: dict | None = None, line: dict | None = None) -> Path:
    """Write an appliance.toml with one line `t1` (hook GPIO17 active low, ring GPIO27)."""
    settings = {"preroll_s": 2.0, **(recorder or {})}
    fields = {"name": "t1", "hook_pin": 17, "hook_active": "low", "ring_pin": 27,
              "ring_active": "low", "capture": "cap", "playback": "play",
              "notice": str(demo_path("notice-en.wav")), **(line or {})}
    text = "[recorder]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in settings.items())
    text += "\n[[line]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in fields.items() if v is not None)
    path = folder / "appliance.toml"
    path.write_text(text)
    return path


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return repr(value)


def write_scenario(folder: Path, calls: list[dict], **top) -> Path:
    """Write a scenario file with the given `[[call]]` tables."""
    text = "".join(f"{k} = {_toml(v)}\n" for k, v in top.items())
    for call in calls:
        text += "\n[[call]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in call.items())
    path = folder / "scenario.toml"
    path.write_text(text)
    return path


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    """Write float samples (full scale 1.0) as a 16-bit mono WAV."""
    from appliance.store.spool import wav_header
    pcm = (np.clip(samples, -1, 32767 / 32768) * 32768).astype("<i2").tobytes()
    path.write_bytes(wav_header(rate, 1, len(pcm)) + pcm)
    return path


def tone(freq: float, seconds: float, level: float = 0.5, rate: int = RATE) -> np.ndarray:
    """A sine tone as float samples."""
    return level * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)


def callrec(*args: str, check: bool = True, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run the `callrec` command in a fresh process, as a user would."""
    result = subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True,
                            text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"callrec {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def feed(raw: Path, fifo: Path, period_frames: int | None = None) -> subprocess.Popen:
    """A feeder process writing `raw` (s16 mono at RATE) into `fifo` in real time, as a card would,
    in periods of `period_frames` (by default the recorder's: the file plugin reads whole periods)."""
    if period_frames is None:
        period_frames = PERIOD_FRAMES
    return subprocess.Popen([sys.executable, "-m", "appliance.feeder", str(raw), str(fifo), "--rate", str(RATE),
                             "--t0", repr(time.monotonic()), "--period-frames", str(period_frames)])


def simulated_cards(data: Path, lines: list[str], audio: bytes | None = None) -> tuple[str, list]:
    """Simulated sound cards for `lines` under `data`/simulation: capture PCMs each read from a FIFO
    that a feeder process fills with `audio` (default: a minute of silence) in real time, and file
    playback PCMs. Returns the value for ALSA_CONFIG_PATH and the feeders (give them to `stop`)."""
    from appliance.simulate import ALSA_BASE_CONFIG, write_asoundrc

    sim = data / "simulation"
    sim.mkdir(parents=True, exist_ok=True)
    raw = sim / "line.raw"
    raw.write_bytes(audio if audio is not None else bytes(RATE * 2 * 60))
    asoundrc = write_asoundrc(sim, lines)
    feeders = []
    for line in lines:
        os.mkfifo(sim / f"line-in-{line}.fifo")
        feeders.append(feed(raw, sim / f"line-in-{line}.fifo"))
    return f"{ALSA_BASE_CONFIG}:{asoundrc}", feeders


def stop(processes: list[subprocess.Popen]) -> None:
    """Kill and reap processes."""
    for process in processes:
        process.kill()
        process.wait()


def calls_json(data: Path) -> list[dict]:
    """The catalogue as `callrec calls --json` prints it."""
    return json.loads(callrec("calls", "--json", "--data", str(data)).stdout)


def recording(data: Path, call: dict) -> np.ndarray:
    """A call's archived recording as float samples at 8 kHz."""
    pcm = decode_to_pcm(data / call["file"], RATE)
    return np.frombuffer(pcm, dtype="<i2") / 32768.0


def tone_level(samples: np.ndarray, freq: float, rate: int = RATE) -> float:
    """Amplitude of `freq` in `samples` (a sine of amplitude A gives about A)."""
    if len(samples) == 0:
        return 0.0
    t = np.arange(len(samples)) / rate
    return 2 * abs(np.dot(samples, np.exp(-2j * np.pi * freq * t))) / len(samples)


def iso_seconds(stamp: str) -> float:
    """Epoch seconds of an ISO 8601 UTC stamp as the catalogue writes it."""
    from datetime import datetime
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def wait_for(condition, timeout: float) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> Path:
    """A spoken sentence from espeak-ng, as a WAV file at 8 kHz."""
    folder = tmp_path_factory.mktemp("speech")
    raw = folder / "raw.wav"
    subprocess.run(["espeak-ng", "-v", "en", "-w", str(raw),
                    "Good morning, I would like to order six boxes of tomatoes."], check=True)
    pcm = np.frombuffer(decode_to_pcm(raw, RATE), dtype="<i2") / 32768.0
    return write_wav(folder / "speech.wav", pcm)


@pytest.fixture(autouse=True)
def _no_stray_alsa_config(monkeypatch):
    monkeypatch.delenv("ALSA_CONFIG_PATH", raising=False)


def record_call(catalogue, data_dir: Path, line: str = "t1", number: str | None = "+3225551234",
                seconds: float = 3.0, freq: float = 440.0, started_at: str | None = None,
                direction: str = "incoming", fmt: str = "opus") -> dict:
    """A finished call with a real recording (a tone), archived and catalogued as the recorder does."""
    from appliance.store.archive import SPOOL_DIR, finalise
    from appliance.clock import iso_utc

    started_at = started_at or iso_utc(time.time())
    spool = data_dir / SPOOL_DIR / f"{line}-{time.monotonic_ns()}.wav"
    spool.parent.mkdir(parents=True, exist_ok=True)
    write_wav(spool, tone(freq, seconds, 0.3))
    call_id = catalogue.add_call(line=line, direction=direction, number=number, started_at=started_at,
                                 answered_at=started_at, purpose="training", state="recording",
                                 spool=str(spool.relative_to(data_dir)), sample_rate=RATE)
    return finalise(catalogue, data_dir, call_id, "complete", fmt, 16000, ended_at=started_at)


WEB_CONFIG = """
[recorder]
data_dir = "data"

[web]
https_port = {https_port}
http_port = {http_port}
hostname = "localhost"

[[line]]
name = "shop"
hook_pin = 17
hook_active = "low"
capture = "cap1"
playback = "play1"
notice = "{notice}"

[[line]]
name = "office"
hook_pin = 18
hook_active = "low"
capture = "cap2"
playback = "play2"
notice = "{notice}"
"""
PASSWORD = "correct horse battery"


def free_port() -> int:
    """A TCP port free on loopback now."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def web_appliance(tmp_path):
    """An appliance with two lines (shop, office) and real recorded calls, ready for the web UI:
    yields (config_path, data_dir, calls), calls keyed by name."""
    from appliance.store.catalogue import Catalogue
    from appliance.clock import iso_utc
    from appliance.keys import ensure_device_key

    config = tmp_path / "appliance.toml"
    config.write_text(WEB_CONFIG.format(https_port=free_port(), http_port=free_port(),
                                        notice=demo_path("notice-en.wav")))
    data = tmp_path / "data"
    ensure_device_key(data)
    catalogue = Catalogue(data)
    now = time.time()
    calls = {
        "supplier": record_call(catalogue, data, "shop", "+3225550101", 20.0, 440, iso_utc(now - 3 * 86400)),
        "customer": record_call(catalogue, data, "shop", "+3225550202", 4.0, 660, iso_utc(now - 3600)),
        "customer_again": record_call(catalogue, data, "office", "025550202", 3.0, 550, iso_utc(now - 1800)),
        "office": record_call(catalogue, data, "office", "+3225550303", 3.0, 880, iso_utc(now - 600)),
    }
    catalogue.close()
    return config, data, calls


@pytest.fixture
def web(web_appliance):
    """The app with three users: an admin, a supervisor of every line and a staff member of the
    office line only. Yields (app, calls)."""
    from web import create_app

    config, data, calls = web_appliance
    app = create_app(config, secure_cookies=False)
    accounts = app.extensions["callrec"].accounts
    accounts.add_user("admin", PASSWORD, "admin", None)
    accounts.add_user("super", PASSWORD, "supervisor", None)
    accounts.add_user("clerk", PASSWORD, "staff", ["office"])
    yield app, calls
    app.extensions["callrec"].close()
