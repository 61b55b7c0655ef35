"""Exception classes whose messages a technician can act on."""


class CallrecError(Exception):
    """Base class: the message is shown to the user as it is, without a traceback.

    Raised as `SomeError(text, **values)`, the message is `text` with its `{name}` fields filled
    from `values`; both are kept (`text`, `values`) so the web UI can show the text in the user's
    language with the same values.
    """

    def __init__(self, *args, **values):
        self.text = args[0] if args else ""
        self.values = values
        super().__init__(self.text.format(**values) if values else self.text, *args[1:])


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
