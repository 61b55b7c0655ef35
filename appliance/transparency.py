"""What the shop must tell the people it records (GDPR Art. 13 and 15), from the settings: the
controller, the supervisory authority to complain to, and who else receives the recordings.

The texts around these facts are the web UI's, in its four languages (`web.notice`, `web.report`);
here are only the facts, so that a signed bundle's manifest carries the same ones as its report.
"""

from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from appliance.config import Config

# The supervisory authority of each country calling code (the shop's `recorder.country_code`):
# its name as it calls itself, and its site (where a complaint is made).
AUTHORITIES = {
    "31": ("Autoriteit Persoonsgegevens (AP)", "https://autoriteitpersoonsgegevens.nl"),
    "32": ("Autorité de protection des données / Gegevensbeschermingsautoriteit (APD/GBA)",
           "https://www.dataprotectionauthority.be"),
    "33": ("Commission nationale de l'informatique et des libertés (CNIL)", "https://www.cnil.fr"),
    "34": ("Agencia Española de Protección de Datos (AEPD)", "https://www.aepd.es"),
    "39": ("Garante per la protezione dei dati personali", "https://www.garanteprivacy.it"),
    "41": ("Eidgenössischer Datenschutz- und Öffentlichkeitsbeauftragter (EDÖB)", "https://www.edoeb.admin.ch"),
    "43": ("Österreichische Datenschutzbehörde (DSB)", "https://www.dsb.gv.at"),
    "44": ("Information Commissioner's Office (ICO)", "https://ico.org.uk"),
    "48": ("Prezes Urzędu Ochrony Danych Osobowych (UODO)", "https://uodo.gov.pl"),
    # In Germany a shop answers to the authority of its Land; the federal list names each.
    "49": ("Landesdatenschutzbehörde (Datenschutz-Aufsichtsbehörde des Bundeslandes)",
           "https://www.bfdi.bund.de/DE/Service/Anschriften/Laender/Laender-node.html"),
    "351": ("Comissão Nacional de Proteção de Dados (CNPD)", "https://www.cnpd.pt"),
    "352": ("Commission nationale pour la protection des données (CNPD)", "https://cnpd.public.lu"),
    "353": ("Data Protection Commission (DPC)", "https://www.dataprotection.ie"),
}
# Where every EU authority is listed, for a country not in the table.
AUTHORITIES_LIST = "https://www.edpb.europa.eu/about-edpb/about-edpb/members_en"


@dataclass(frozen=True)
class Authority:
    """The supervisory authority: `name` None means "your national authority" (to be said in the
    reader's language), with the list of all of them as its `url`."""

    name: str | None
    url: str


@dataclass(frozen=True)
class Recipient:
    """Who else receives the calls: `kind` is `offload` (a copy of each recording), `crm` (each
    call's details when it ends) or `other` (as the settings describe it in `where`)."""

    kind: str
    where: str


def authority(config: Config) -> Authority:
    """The supervisory authority: as `[privacy]` names it, else the one of the shop's country."""
    privacy = config.privacy
    known = AUTHORITIES.get(config.recorder.country_code)
    if privacy.authority:
        return Authority(privacy.authority, privacy.authority_url or (known[1] if known else AUTHORITIES_LIST))
    if known is not None:
        return Authority(*known)
    return Authority(None, AUTHORITIES_LIST)


def recipients(config: Config) -> list[Recipient]:
    """The recipients the settings make: the offload target, the CRM's webhook, and those
    `[privacy] recipients` lists. Addresses inside the shop (an rsync NAS) are not named."""
    found = []
    if config.offload is not None:
        offload = config.offload
        where = urlsplit(offload.endpoint).hostname if offload.type == "s3" else ""
        found.append(Recipient("offload", f"{where} ({offload.bucket})" if where else ""))
    if config.webhook is not None:
        found.append(Recipient("crm", urlsplit(config.webhook.url).hostname or ""))
    found += [Recipient("other", text) for text in config.privacy.recipients]
    return found


def controller_facts(config: Config) -> dict:
    """The controller, its contacts, the authority and the recipients, as a bundle's manifest
    carries them (signed with the recordings)."""
    privacy = config.privacy
    return {"controller": privacy.controller, "address": privacy.address, "email": privacy.email,
            "phone": privacy.phone, "dpo": privacy.dpo, "authority": asdict(authority(config)),
            "recipients": [asdict(r) for r in recipients(config)]}
