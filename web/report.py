"""A customer's access report (GDPR Art. 15): the controller, each call of their number with its
purpose, legal basis and end of retention as stored when it was recorded, where the data comes
from, who receives it and whether each call went to them, their rights and the authority to
complain to, in their language (`templates/report.html`). It is shown from the privacy page and
put in the signed bundle as `report.html`, beside the manifest that carries the same facts.
"""

import time

from appliance.clock import iso_utc
from appliance.config import Config
from appliance.transparency import controller_facts
from web.documents import render_document

def render_report(config: Config, number: str, calls: list[dict], lang: str, made_at: str | None = None) -> str:
    """The access report of `number` over `calls` (rows of the catalogue, newest first) in `lang`."""
    return render_document("report.html", lang, facts=controller_facts(config), number=number, calls=calls,
                           made_at=made_at or iso_utc(time.time()))
