"""`callrec simulate`: the real recorder against simulated hardware.

gpiozero's MockFactory stands in for the pins, and for each line an ALSA `file`-plugin capture
PCM reads a FIFO fed in real time by a feeder process, while the playback PCM writes what it is
given to `simulation/line-out-<line>.raw` in the data folder (each later play, a beep every few
seconds, to `line-out-<line>.raw.0001`, `.0002`…); the feeder mixes that back into the line, as a
real line carries the notice to the tap. The recorder code is the one
`callrec run` uses; only the pin factory and the device names differ.
"""

import logging
import os
import pty
import select
import subprocess
import sys
import threading
import time
import tty
from dataclasses import replace
from itertools import count
from pathlib import Path

import numpy as np

from gpiozero.pins.mock import MockFactory

from appliance.config import Config, demo_path, load_config
from appliance.recorder import Recorder
from appliance.scenario import ModemLine, PinEdge, load_scenario, plan

log = logging.getLogger(__name__)

SIM_DIR = "simulation"
STARTUP_S = 1.0          # head start given to the recorder before the scenario's clock starts
FINALISE_TIMEOUT_S = 120.0
ALSA_BASE_CONFIG = "/usr/share/alsa/alsa.conf"


def capture_pcm(line: str) -> str:
    """Name of a line's simulated capture PCM."""
    return f"callrec_sim_capture_{line}"


def playback_pcm(line: str) -> str:
    """Name of a line's simulated playback PCM."""
    return f"callrec_sim_playback_{line}"


def line_out_path(data_dir: Path, line: str) -> Path:
    """Where a line's simulated playback device writes what was played (raw s16 mono)."""
    return Path(data_dir) / SIM_DIR / f"line-out-{line}.raw"


def write_asoundrc(sim_dir: Path, lines: list[str]) -> Path:
    """An ALSA configuration with a FIFO-fed capture PCM and a file playback PCM per line."""
    parts = []
    for line in lines:
        parts.append(f"""
pcm.{capture_pcm(line)} {{
    type file
    slave.pcm {{ type null }}
    file "/dev/null"
    infile "{sim_dir / f'line-in-{line}.fifo'}"
    format "raw"
}}
pcm.{playback_pcm(line)} {{
    type file
    slave.pcm {{ type null }}
    file "{line_out_path(sim_dir.parent, line)}"
    format "raw"
    truncate false
}}""")
    path = sim_dir / "asoundrc"
    path.write_text("".join(parts) + "\n")
    return path


def simulated(config: Config, data_dir: Path, modems: dict[str, str] | None = None) -> Config:
    """The same configuration with the simulated devices and the given data folder. With `modems`
    (by line name), those modems replace the configured ones, and lines not in it have none."""
    lines = [line.model_copy(update={"capture": capture_pcm(line.name), "playback": playback_pcm(line.name),
                                     **({"modem": modems.get(line.name)} if modems is not None else {})})
             for line in config.line]
    recorder = config.recorder.model_copy(update={"data_dir": Path(data_dir)})
    return config.model_copy(update={"line": lines, "recorder": recorder})


class PinDriver(threading.Thread):
    """Drives the mock pins through the scenario's edges on the shared clock; with a `period`, again
    and again, one period later each time, until stopped."""

    def __init__(self, factory: MockFactory, config: Config, edges: list[PinEdge], t0: float,
                 period: float | None = None):
        super().__init__(name="pin-driver", daemon=True)
        self.edges = edges
        self.t0 = t0
        self.period = period
        self.stopping = threading.Event()
        self.pins = {}
        for line in config.line:
            self.pins[(line.name, "hook")] = (factory.pin(line.hook_pin), line.hook_active)
            if line.ring_pin is not None:
                self.pins[(line.name, "ring")] = (factory.pin(line.ring_pin), line.ring_active)
            for button, pin in (("pause", line.pause_button_pin), ("agreement", line.agreement_button_pin),
                                ("private", line.private_button_pin)):
                if pin is not None:
                    self.pins[(line.name, button)] = (factory.pin(pin), "low")

    def run(self) -> None:
        for start in count(self.t0, self.period) if self.period else (self.t0,):
            for edge in self.edges:
                if (edge.line, edge.input) not in self.pins:
                    continue   # an input the line does not have (a ring detector, a button)
                if self.stopping.wait(max(0.0, start + edge.t - time.monotonic())):
                    return
                pin, active_level = self.pins[(edge.line, edge.input)]
                high = edge.active == (active_level == "high")
                pin.drive_high() if high else pin.drive_low()


class SimModem(threading.Thread):
    """A caller-ID modem on a pty: answers AT commands with OK, sends RING and caller ID on time
    (with a `period`, again one period later each time)."""

    def __init__(self, lines: list[ModemLine], t0: float, period: float | None = None):
        super().__init__(name="sim-modem", daemon=True)
        self.master, slave = pty.openpty()
        tty.setraw(slave)
        self._slave = slave                 # kept open so the pty lives while the recorder reopens
        self.path = os.ttyname(slave)
        self.lines = lines
        self.t0 = t0
        self.period = period
        self.stopping = threading.Event()

    def run(self) -> None:
        pending, heard, cycle = list(self.lines), b"", 0
        while not self.stopping.is_set():
            if not pending and self.period and self.lines:
                cycle += 1
                pending = [replace(line, t=line.t + cycle * self.period) for line in self.lines]
            due = self.t0 + pending[0].t - time.monotonic() if pending else 0.2
            ready, _, _ = select.select([self.master], [], [], max(0.0, min(due, 0.2)))
            if ready:
                heard += os.read(self.master, 1024)
                while b"\r" in heard:
                    command, heard = heard.split(b"\r", 1)
                    if command.strip().upper().startswith(b"AT"):
                        os.write(self.master, b"\r\nOK\r\n")
            while pending and time.monotonic() >= self.t0 + pending[0].t:
                os.write(self.master, f"\r\n{pending.pop(0).text}\r\n".encode())

    def close(self) -> None:
        """Stop and release the pty."""
        self.stopping.set()
        self.join()
        os.close(self.master)
        os.close(self._slave)


def start_feeders(config: Config, data_dir: Path, audio: dict[str, np.ndarray], t0: dict[str, float],
                  loop: bool = False) -> list[subprocess.Popen]:
    """Make the simulated sound devices of the configuration's lines (visible to this process's
    ALSA only) and start a feeder process per line that plays its `audio` into the line from its
    `t0` on (with `loop`, over and over)."""
    sim_dir = Path(data_dir) / SIM_DIR
    names = [line.name for line in config.line]
    # Only this process's ALSA sees the simulated devices; the system's config comes first.
    os.environ["ALSA_CONFIG_PATH"] = f"{ALSA_BASE_CONFIG}:{write_asoundrc(sim_dir, names)}"
    feeders = []
    rate = config.recorder.sample_rate
    for name in names:
        out = line_out_path(data_dir, name)
        for played in (out, *out.parent.glob(f"{out.name}.[0-9][0-9][0-9][0-9]")):     # a run's earlier plays
            played.unlink(missing_ok=True)
        fifo = sim_dir / f"line-in-{name}.fifo"
        if fifo.exists():
            fifo.unlink()
        os.mkfifo(fifo)
        raw = sim_dir / f"line-in-{name}.raw"
        audio[name].tofile(raw)
        feeders.append(subprocess.Popen(
            [sys.executable, "-m", "appliance.feeder", str(raw), str(fifo),
             "--rate", str(rate), "--t0", repr(t0[name]),
             "--period-frames", str(rate * config.recorder.period_ms // 1000),
             "--line-out", str(out), *(["--loop"] if loop else [])]))
    return feeders


def stop_feeders(feeders: list[subprocess.Popen]) -> None:
    """Stop the feeder processes and wait for them."""
    for feeder in feeders:
        feeder.terminate()
        feeder.wait()


def run_simulation(scenario_path: Path | None = None, config_path: Path | None = None,
                   data_dir: Path | None = None) -> list[dict]:
    """Run a scenario (the bundled demo if None) through the recorder; return the calls it made,
    once the last one is finalised."""
    scenario, base = load_scenario(scenario_path or demo_path("scenario.toml"))
    config = load_config(config_path or demo_path("appliance.toml"))
    # Never the configured data folder by default: that is the live recorder's on an appliance.
    data_dir = Path(data_dir if data_dir is not None else Path.cwd() / "callrec-data").resolve()
    (data_dir / SIM_DIR).mkdir(parents=True, exist_ok=True)
    names = [line.name for line in config.line]
    layout = plan(scenario, base, names, config.recorder.sample_rate,
                  caller_id={line.name: line.caller_id for line in config.line})
    t0 = time.monotonic() + STARTUP_S
    modems = {name: SimModem([m for m in layout.modem if m.line == name], t0)
              for name in names if any(m.line == name for m in layout.modem if m.text != "RING")}
    config = simulated(config, data_dir, {name: modem.path for name, modem in modems.items()})
    for modem in modems.values():
        modem.start()
    feeders = start_feeders(config, data_dir, layout.audio, dict.fromkeys(names, t0))
    factory = MockFactory()
    recorder = Recorder(config, pin_factory=factory)
    try:
        first_id = max((c["id"] for c in recorder.catalogue.calls()), default=0)
        recorder.start()
        driver = PinDriver(factory, config, layout.edges, t0)
        driver.start()
        driver.join()
        settle = (config.recorder.debounce_ms + config.recorder.flash_max_ms) / 1000 + 0.5
        _sleep_until(t0 + layout.end + settle)
        deadline = time.monotonic() + FINALISE_TIMEOUT_S
        while not recorder.idle() and time.monotonic() < deadline:
            time.sleep(0.1)
        calls = recorder.catalogue.calls("id > ?", [first_id])
    finally:
        recorder.stop()
        stop_feeders(feeders)
        for modem in modems.values():
            modem.close()
        factory.reset()
    return calls


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)
