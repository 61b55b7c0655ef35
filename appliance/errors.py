"""Exception classes whose messages a technician can act on."""


class CallrecError(Exception):
    """Base class: the message is shown to the user as it is, without a traceback."""


class ConfigError(CallrecError, ValueError):
    """The configuration file is missing, unreadable or invalid."""


class ScenarioError(CallrecError, ValueError):
    """A simulation scenario file is invalid."""


class AudioFileError(CallrecError, ValueError):
    """A sound file (a notice, a scenario's audio) cannot be decoded."""


class StoreError(CallrecError, OSError):
    """The catalogue or the archive cannot be used."""


class HardwareError(CallrecError, OSError):
    """A GPIO pin or sound device named in the configuration cannot be used."""
