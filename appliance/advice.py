"""What the configuration does that data-protection authorities advise against: a purpose kept
longer than its limit, or recorded on every call where it should be occasional. Warnings, not
errors: the shop may have its reasons, but the technician and the privacy officer must see them
(the settings and status pages, `callrec doctor`, the recorder's log at start)."""

from dataclasses import dataclass, field

from appliance.config import Config

# The texts, with {placeholders}; the web UI shows them translated.
TEXTS = {
    "retention": "Purpose {purpose}: calls are kept {days} days, longer than the {limit} days advised for it.",
    "systematic": "Line {line} records every call for {purpose} at all hours: recording for this purpose "
                  "should be occasional (set a schedule or record one call in several).",
}


@dataclass(frozen=True)
class Advice:
    """One warning: its kind (a key of `TEXTS`) and the values of its placeholders."""
    kind: str
    values: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return TEXTS[self.kind].format(**self.values)


def config_advice(config: Config) -> list[Advice]:
    """The warnings for `config`, purposes first, then lines and trunks in their order."""
    advice = [Advice("retention", {"purpose": name, "days": p.retention_days, "limit": p.max_retention_days})
              for name, p in config.purpose.items()
              if p.max_retention_days is not None and p.retention_days > p.max_retention_days]
    for line in [*config.line, *config.sip_trunk]:
        if (config.purpose[line.purpose].occasional and line.record and not line.schedule
                and line.record_one_in == 1):
            advice.append(Advice("systematic", {"line": line.name, "purpose": line.purpose}))
    return advice
