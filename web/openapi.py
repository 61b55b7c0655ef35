"""The OpenAPI 3 document of the JSON API (served at `/api/openapi.json`)."""

from appliance import __version__
from appliance.store.catalogue import CALL_FIELDS

_NULLABLE_STRING = {"type": ["string", "null"]}
_CALL_TYPES = {
    "id": {"type": "integer"}, "line": {"type": "string"}, "direction": {"type": "string"},
    "purpose": {"type": "string"}, "state": {"type": "string"}, "held": {"type": "integer"}, "restricted": {"type": "integer"},
    "flashes": {"type": "integer"}, "capture_errors": {"type": "integer"}, "overruns": {"type": "integer"},
    "duration_s": {"type": ["number", "null"]}, "size_bytes": {"type": ["integer", "null"]},
    "sample_rate": {"type": ["integer", "null"]}, "samples": {"type": ["integer", "null"]},
    "clock_synced": {"type": ["integer", "null"]},
}


def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_FILTERS = [
    _query("since", {"type": "string", "format": "date"}, "Calls started on or after this local day"),
    _query("until", {"type": "string", "format": "date"}, "Calls started on or before this local day"),
    _query("line", {"type": "string"}, "Only this line"),
    _query("direction", {"type": "string", "enum": ["incoming", "outgoing", "unknown"]}, "Call direction"),
    _query("number", {"type": "string"}, "Exactly this phone number"),
    _query("purpose", {"type": "string"}, "Only this purpose"),
    _query("min_s", {"type": "number"}, "At least this many seconds long"),
    _query("max_s", {"type": "number"}, "At most this many seconds long"),
    _query("flag", {"type": "string", "enum": ["held", "restricted", "agreement", "interrupted"]}, "Only flagged calls"),
    _query("q", {"type": "string"}, "Search in numbers, contact names and notes"),
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "Page size"),
    _query("offset", {"type": "integer", "minimum": 0, "maximum": 10_000_000, "default": 0}, "Calls to skip"),
]
_CALL_ID = {"name": "call_id", "in": "path", "required": True, "schema": {"type": "integer"}}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_UNAUTHORISED = _error("No valid API token")
# A number the appliance can normalise (`appliance.contacts.normalise`) to 15 digits at most, whatever
# the country code: international with "+" or "00", national after one "0", or short. Parentheses,
# which the appliance takes too ("+32 (0)2…" drops the "(0)"), are left out: no pattern says that rule.
_SEP = r"[\s.\-/]"
_PHONE_NUMBER = (rf"^{_SEP}*(?:(?:\+|0{_SEP}*0)(?:{_SEP}*[0-9]){{1,15}}|0(?:{_SEP}*[1-9](?:{_SEP}*[0-9]){{0,11}})?"
                 rf"|[1-9](?:{_SEP}*[0-9]){{0,14}}){_SEP}*$")
_NUMBER_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["number"], "additionalProperties": False,
    "properties": {"number": {"type": "string", "pattern": _PHONE_NUMBER},
                   "note": {"type": ["string", "null"], "maxLength": 500}}}}}}
_CONTACT_NUMBER = {"name": "number", "in": "path", "required": True, "schema": {"type": "string"},
                   "description": "The contact's number, in any written form (e.g. +3225551234)"}
# At least one character that is not blank as the appliance strips (Python's whitespace, which has
# the control characters 0x1c-0x1f and 0x85 that a JSON Schema "\S" lets through).
_NAME = {"type": "string", "minLength": 1, "maxLength": 200,
         "pattern": "[^\\s\x1c-\x1f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"}
_TEXT = {"type": ["string", "null"], "maxLength": 500}
_CONTACT_PROPERTIES = {"number": {"type": "string", "pattern": _PHONE_NUMBER}, "name": _NAME,
                       "company": _TEXT, "note": _TEXT}
_CALL_CHANGED = {"description": "Done: the call as it is now", "content": {"application/json": {"schema": {
    "type": "object", "required": ["call"], "properties": {"call": {"$ref": "#/components/schemas/Call"}}}}}}
_FILTER_OBJECT = {"type": "object", "additionalProperties": False, "properties": {
    **{p["name"]: p["schema"] for p in _FILTERS if p["name"] not in ("limit", "offset", "min_s", "max_s", "flag")},
    "min_s": {"type": "number", "minimum": 0}, "max_s": {"type": "number", "minimum": 0},
    "flag": {"type": "array", "items": {"type": "string", "enum": ["held", "restricted", "agreement", "interrupted"]}}}}


def _call_change(summary: str, properties: dict, required: list[str], conflict: str | None = None) -> dict:
    """A change to one call as the call page's buttons make it."""
    return {"summary": summary, "parameters": [_CALL_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": required, "additionalProperties": False, "properties": properties}}}},
            "responses": {"200": _CALL_CHANGED, "400": _error("Refused (the message says why); nothing changed"),
                          "401": _UNAUTHORISED, "403": _error("The token's role is below supervisor"),
                          "404": _error("No such call, or not on the token's lines"),
                          **({"409": _error(conflict)} if conflict else {})}}


_ADDED = {"description": "On the list (201: added now, 200: it was already)", "content": {"application/json": {
    "schema": {"type": "object", "required": ["added"], "properties": {"added": {"type": "boolean"}}}}}}


def document(server: str, purposes: list[str]) -> dict:
    """The OpenAPI document, with `server` as the base address and the configured `purposes`."""
    call = {"type": "object", "properties": {name: _CALL_TYPES.get(name, _NULLABLE_STRING) for name in CALL_FIELDS},
            "required": list(CALL_FIELDS)}
    job = {"type": "object", "required": ["id", "state", "done", "total", "calls"],
           "properties": {"id": {"type": "string"}, "state": {"type": "string", "enum": ["running", "ready", "failed"]},
                          "done": {"type": "integer"}, "total": {"type": "integer"}, "calls": {"type": "integer"},
                          "size": {"type": "integer"}, "written": {"type": "integer"},
                          "error": _NULLABLE_STRING, "status_url": {"type": "string"},
                          "bundle_url": {"type": "string"}}}
    contact = {"type": "object", "required": ["number", "name", "company", "note", "url"],
               "properties": {"number": {"type": "string"}, "name": {"type": "string"}, "company": _NULLABLE_STRING,
                              "note": _NULLABLE_STRING, "url": {"type": "string"}}}
    contact_answer = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Contact"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "callrec API", "version": __version__,
                 "description": "Calls, recordings and signed exports of a callrec appliance. Authenticate "
                                "with an API token made on the users page: `Authorization: Bearer <token>`."},
        "servers": [{"url": server}],
        "security": [{"token": []}],
        "components": {
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Call": call,
                "Job": job,
                "Contact": contact,
            },
        },
        "paths": {
            "/api/v1/calls": {"get": {
                "summary": "Calls, newest first", "parameters": _FILTERS,
                "responses": {
                    "200": {"description": "A page of calls", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["calls", "more"],
                        "properties": {"calls": {"type": "array", "items": {"$ref": "#/components/schemas/Call"}},
                                       "more": {"type": "boolean"}}}}}},
                    "400": _error("A filter that cannot be understood"), "401": _UNAUTHORISED}}},
            "/api/v1/calls/{call_id}": {"get": {
                "summary": "One call, with its digits and pauses", "parameters": [_CALL_ID],
                "responses": {
                    "200": {"description": "The call", "content": {"application/json": {"schema": {
                        "allOf": [{"$ref": "#/components/schemas/Call"}, {"type": "object", "required": [
                            "digits", "pauses", "audio_url"], "properties": {
                            "digits": {"type": "array"}, "pauses": {"type": "array"},
                            "audio_url": _NULLABLE_STRING}}]}}}},
                    "401": _UNAUTHORISED, "404": _error("No such call, or not on the token's lines")}}},
            "/api/v1/calls/{call_id}/audio": {"get": {
                "summary": "The recording as archived (Range requests supported)", "parameters": [_CALL_ID],
                "responses": {
                    "200": {"description": "The audio file", "content": {
                        "audio/ogg": {}, "audio/flac": {}, "audio/wav": {}}},
                    "206": {"description": "Part of the audio file"},
                    "401": _UNAUTHORISED, "404": _error("No such call or no recording"),
                    "416": {"description": "A range outside the file"}}}},
            "/api/v1/exports": {"post": {
                "summary": "Start a signed export bundle",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "oneOf": [
                        {"type": "object", "required": ["call_ids"], "additionalProperties": False, "properties": {
                            "call_ids": {"type": "array", "minItems": 1, "items": {"type": "integer"}}}},
                        {"type": "object", "required": ["number"], "additionalProperties": False, "properties": {
                            "number": {"type": "string", "minLength": 1}}},
                        {"type": "object", "required": ["filter"], "additionalProperties": False, "properties": {
                            "filter": _FILTER_OBJECT}}]}}}},
                "responses": {
                    "202": {"description": "The export started", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Job"}}}},
                    "400": _error("A malformed request"), "401": _UNAUTHORISED,
                    "403": _error("The token's role is below supervisor"),
                    "404": _error("No such call, or nothing to export"),
                    "409": _error("An export of this token's is still running, or there is no room for it")}}},
            "/api/v1/calls/{call_id}/rectify": {"post": {
                "summary": "Correct a call's number and/or its caller's name (GDPR Art. 16)",
                "parameters": [_CALL_ID],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "minProperties": 1, "additionalProperties": False, "properties": {
                        "number": {"type": "string", "pattern": _PHONE_NUMBER},
                        "contact_name": {"type": "string", "minLength": 1, "maxLength": 500,
                                         "pattern": r"\S"}}}}}},
                "responses": {
                    "200": {"description": "The fields changed, and the call", "content": {"application/json": {
                        "schema": {"type": "object", "required": ["changed", "call"], "properties": {
                            "changed": {"type": "array", "items": {"type": "string"}},
                            "call": {"$ref": "#/components/schemas/Call"}}}}}},
                    "400": _error("Not a phone number or a name, or a malformed request"), "401": _UNAUTHORISED,
                    "403": _error("The token's role is below supervisor"),
                    "404": _error("No such call, or not on the token's lines")}}},
            "/api/v1/calls/{call_id}/notes": {"put": _call_change(
                "Replace a call's notes (null or empty: none)",
                {"notes": {"type": ["string", "null"], "maxLength": 4000}}, ["notes"])},
            "/api/v1/calls/{call_id}/purpose": {"put": _call_change(
                "Give a call another purpose (which sets how long it is kept)",
                {"purpose": {"type": "string", "enum": purposes}}, ["purpose"])},
            "/api/v1/calls/{call_id}/hold": {"post": _call_change(
                "Put a call on hold for a reason: never deleted until released",
                {"reason": {"type": "string", "minLength": 1, "maxLength": 500, "pattern": r"\S"}}, ["reason"])},
            "/api/v1/calls/{call_id}/release": {"post": _call_change("End a call's hold", {}, [],
                                                                     "The call is not on hold")},
            "/api/v1/contacts": {
                "get": {
                    "summary": "Every contact, by name",
                    "responses": {
                        "200": {"description": "The contacts", "content": {"application/json": {"schema": {
                            "type": "object", "required": ["contacts"], "properties": {"contacts": {
                                "type": "array", "items": {"$ref": "#/components/schemas/Contact"}}}}}}},
                        "401": _UNAUTHORISED}},
                "post": {
                    "summary": "Add a contact (its number is normalised as the CSV import does)",
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["number", "name"], "additionalProperties": False,
                        "properties": _CONTACT_PROPERTIES}}}},
                    "responses": {
                        "201": {"description": "Added", **contact_answer},
                        "400": _error("Not a phone number, no name, or a malformed request; nothing changed"),
                        "401": _UNAUTHORISED, "403": _error("The token's role is below supervisor"),
                        "409": _error("Another contact has this number; nothing changed")}}},
            "/api/v1/contacts.csv": {"get": {
                "summary": "The contacts as the CSV file `callrec contacts import` reads",
                "responses": {"200": {"description": "CSV: number,name,company,note", "content": {"text/csv": {}}},
                              "401": _UNAUTHORISED, "403": _error("The token's role is below supervisor")}}},
            "/api/v1/contacts/{number}": {
                "get": {
                    "summary": "The contact of a number", "parameters": [_CONTACT_NUMBER],
                    "responses": {"200": {"description": "The contact", **contact_answer}, "401": _UNAUTHORISED,
                                  "404": _error("No contact has this number")}},
                "patch": {
                    "summary": "Change some fields of a contact (its number too)", "parameters": [_CONTACT_NUMBER],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {
                        "type": "object", "additionalProperties": False, "properties": _CONTACT_PROPERTIES}}}},
                    "responses": {
                        "200": {"description": "The contact as it is now", **contact_answer},
                        "400": _error("Not a phone number, no name, or a malformed request; nothing changed"),
                        "401": _UNAUTHORISED, "403": _error("The token's role is below supervisor"),
                        "404": _error("No contact has this number"),
                        "409": _error("Another contact has the new number; nothing changed")}},
                "delete": {
                    "summary": "Delete a contact", "parameters": [_CONTACT_NUMBER],
                    "responses": {
                        "200": {"description": "Deleted", "content": {"application/json": {"schema": {
                            "type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "boolean"}}}}}},
                        "401": _UNAUTHORISED, "403": _error("The token's role is below supervisor"),
                        "404": _error("No contact has this number")}}},
            "/api/v1/do-not-record": {
                "get": {
                    "summary": "The do-not-record list (each number's last digits only)",
                    "responses": {
                        "200": {"description": "The list", "content": {"application/json": {"schema": {
                            "type": "object", "required": ["entries"], "properties": {"entries": {
                                "type": "array", "items": {"type": "object", "required": [
                                    "hint", "added_at", "added_by", "note"], "properties": {
                                    "hint": {"type": "string"}, "added_at": {"type": "string"},
                                    "added_by": {"type": "string"}, "note": _NULLABLE_STRING}}}}}}}},
                        "401": _UNAUTHORISED, "403": _error("The token's role is below supervisor")}},
                "post": {
                    "summary": "Stop recording the calls of a number (the person objected)",
                    "requestBody": _NUMBER_BODY,
                    "responses": {
                        "201": _ADDED, "200": _ADDED, "400": _error("Not a phone number, or a malformed request"),
                        "401": _UNAUTHORISED, "403": _error("The token's role is below supervisor")}}},
            "/api/v1/do-not-record/remove": {"post": {
                "summary": "Record the calls of a number again (the objection was withdrawn)",
                "requestBody": _NUMBER_BODY,
                "responses": {
                    "200": {"description": "Taken off the list", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["removed"], "properties": {"removed": {"type": "boolean"}}}}}},
                    "400": _error("Not a phone number, or a malformed request"), "401": _UNAUTHORISED,
                    "403": _error("The token's role is below supervisor"),
                    "404": _error("The number is not on the list")}}},
            "/api/v1/exports/{job_id}": {"get": {
                "summary": "An export's progress", "parameters": [_JOB_ID],
                "responses": {
                    "200": {"description": "The export", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Job"}}}},
                    "401": _UNAUTHORISED, "404": _error("No such export")}}},
            "/api/v1/exports/{job_id}/bundle": {"get": {
                "summary": "The finished bundle", "parameters": [_JOB_ID],
                "responses": {
                    "200": {"description": "The bundle", "content": {"application/zip": {}}},
                    "401": _UNAUTHORISED, "404": _error("No such export"),
                    "409": _error("The export is not ready")}}},
        },
    }
