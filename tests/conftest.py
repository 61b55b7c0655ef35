"""Shared test helpers: configs, scenarios, running `callrec` as a user would, reading recordings."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from appliance.codec import decode_to_pcm
from appliance.config import demo_path

RATE = 8000


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
    from appliance.spool import wav_header
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
