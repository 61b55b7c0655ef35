"""`callrec demo`: the demo that keeps going. The real recorder on simulated lines, as `callrec
simulate` runs it, with a call on every line each round, for ever: the rounds' calls are picked
from the bundled variants (`appliance/demo/loop.toml`) in a seeded order, and the lines take their
turns half a round apart. With the web UI's configuration, `callrec web` runs beside it, in its own
process, and stops with it.

Each line's rounds make one cycle (a round per variant) that its feeder, pin driver and modem
repeat; a caller ID is one of a few numbers, drawn per round.
"""

import logging
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

from gpiozero.pins.mock import MockFactory

from appliance.config import Config, demo_path, load_config
from appliance.errors import CallrecError, ConfigError, ScenarioError
from appliance.recorder import Recorder
from appliance.scenario import Scenario, load_scenario, plan
from appliance.simulate import SIM_DIR, STARTUP_S, PinDriver, SimModem, simulated, start_feeders, stop_feeders

log = logging.getLogger(__name__)

ROUND_S = 30.0
NUMBERS = ("+3225551234", "+3226667788", "+32475123456", "+3224449876", "+31201234567", "+48225551234")
WEB_STOP_S = 15.0       # the web UI's own stop waits up to 10 s for its connections
MARGIN_S = 1.0          # between the end of a round's call (finalised) and the next round


class WebStopped(CallrecError, RuntimeError):
    """The web UI started beside the demo ended by itself."""


def round_needs(variants: Scenario, base: Path, config: Config) -> float:
    """Seconds a round must last for its longest variant to end and be catalogued: the hang-up and
    the flash window, or for a call nobody answers, the ring gap after its last ring."""
    settle = (config.recorder.debounce_ms + config.recorder.flash_max_ms) / 1000
    needs = 0.0
    for call in variants.call:
        alone = plan(variants.model_copy(update={"call": [call]}), base, ["line"], config.recorder.sample_rate)
        needs = max(needs, alone.end + (settle if call.answered else config.recorder.ring_gap_s))
    return needs + MARGIN_S


def line_scenario(variants: Scenario, order: list[int], every: float, rng: random.Random) -> Scenario:
    """One line's cycle: the variants in `order`, one per round of `every` seconds, each caller ID
    drawn from the demo's numbers."""
    calls = []
    for index, variant in enumerate(order):
        call = variants.call[variant]
        update = {"at": index * every + call.at}
        if call.caller_id is not None:
            update["caller_id"] = rng.choice(NUMBERS)
        calls.append(call.model_copy(update=update))
    return variants.model_copy(update={"call": calls})


def run_demo(stop: threading.Event, config_path: Path | None = None, data_dir: Path | None = None,
             every: float = ROUND_S, seed: int = 0, web_config: Path | None = None) -> None:
    """Run the demo on the configuration's lines (the bundled demo's if None) until `stop` is set;
    with `web_config`, serve the web UI too. Calls in progress are finalised before it returns."""
    variants, base = load_scenario(demo_path("loop.toml"))
    config = load_config(config_path or demo_path("appliance.toml"))
    data_dir = Path(data_dir if data_dir is not None else Path.cwd() / "callrec-data").resolve()
    if web_config is not None and (read := load_config(web_config).recorder.data_dir.resolve()) != data_dir:
        raise ConfigError(f"invalid configuration in {web_config}:\n  recorder.data_dir: the web UI would read "
                          f"{read}, not the demo's data folder {data_dir}")
    needs = round_needs(variants, base, config)
    if every < needs:
        raise ScenarioError(f"--every {every:g}: the demo's longest call needs rounds of {needs:.1f} s at least")
    (data_dir / SIM_DIR).mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    rounds = list(range(len(variants.call)))
    t0 = time.monotonic() + STARTUP_S
    layouts, starts = {}, {}
    for index, line in enumerate(config.line):
        order = rng.sample(rounds, len(rounds))
        if index == 0:          # the first call of the demo: an answered call, soon
            order.remove(0)
            order.insert(0, 0)
        layouts[line.name] = plan(line_scenario(variants, order, every, rng), base, [line.name],
                                  config.recorder.sample_rate, caller_id={line.name: line.caller_id},
                                  length=len(rounds) * every)
        starts[line.name] = t0 + index * every / len(config.line)
    cycle = len(rounds) * every
    modems = {name: SimModem(layout.modem, starts[name], cycle)
              for name, layout in layouts.items() if any(m.text != "RING" for m in layout.modem)}
    config = simulated(config, data_dir, {name: modem.path for name, modem in modems.items()})
    for modem in modems.values():
        modem.start()
    feeders = start_feeders(config, data_dir, {name: layout.audio[name] for name, layout in layouts.items()},
                            starts, loop=True)
    factory = MockFactory()
    drivers, recorder, web = [], None, None
    try:
        recorder = Recorder(config, pin_factory=factory)
        recorder.start()
        drivers = [PinDriver(factory, config, layout.edges, starts[name], cycle) for name, layout in layouts.items()]
        for driver in drivers:
            driver.start()
        if web_config is not None:
            web = subprocess.Popen([sys.executable, "-m", "appliance", "web", "--config", str(web_config)])
        log.info("demo: %d line(s), a call on each every %g s, in %s; Ctrl-C stops it",
                 len(config.line), every, data_dir)
        while not stop.wait(0.5):
            if web is not None and web.poll() is not None:
                raise WebStopped("the web UI stopped by itself (exit status {status}): its messages above say why",
                                 status=web.returncode)
    finally:
        if web is not None:
            web.terminate()
            try:
                web.wait(timeout=WEB_STOP_S)
            except subprocess.TimeoutExpired:
                log.error("the web UI did not stop within %g s: killed", WEB_STOP_S)
                web.kill()
                web.wait()
        for driver in drivers:
            driver.stopping.set()
            driver.join()
        if recorder is not None:
            log.info("stopping: finalising calls in progress")
            recorder.stop()
        stop_feeders(feeders)
        for modem in modems.values():
            modem.close()
        factory.reset()
