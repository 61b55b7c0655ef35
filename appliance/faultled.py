"""The fault LED: tells a technician at a glance what is wrong, by a number of short blinks
repeated every few seconds: 1 no sound card, 2 storage alarm, 3 caller-ID modem lost, 4 a SIP
trunk's relay down. Off when all is well. The most serious fault present is shown."""

import threading

from gpiozero import LED

BLINK_S = 0.2
PAUSE_S = 1.5
NO_SOUND_CARD, STORAGE_ALARM, MODEM_LOST, TRUNK_DOWN = 1, 2, 3, 4


class FaultLed(threading.Thread):
    """Shows the pattern of `faults()` (a function returning the fault numbers present)."""

    def __init__(self, pin, faults, pin_factory=None):
        super().__init__(name="fault-led", daemon=True)
        self.led = LED(pin, pin_factory=pin_factory)
        self.faults = faults
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                present = self.faults()
            except Exception:
                present = {STORAGE_ALARM}   # cannot even tell: say something is wrong
            if not present:
                self.led.off()
                self.stopping.wait(PAUSE_S)
                continue
            for _ in range(min(present)):
                self.led.on()
                self.stopping.wait(BLINK_S)
                self.led.off()
                self.stopping.wait(BLINK_S)
            self.stopping.wait(PAUSE_S)

    def close(self) -> None:
        """Stop blinking and release the pin."""
        self.stopping.set()
        if self.is_alive():
            self.join()
        self.led.close()
