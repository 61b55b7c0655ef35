"""The JSON API fuzzed from its own OpenAPI document (schemathesis): whatever it is sent, no server
error, and every answer matches the document."""

import schemathesis
from hypothesis import HealthCheck, given, settings

from conftest import PASSWORD


def test_the_api_never_fails_with_a_server_error_and_answers_as_documented(web_appliance):
    from web import create_app

    config, _, _ = web_appliance
    app = create_app(config, secure_cookies=False)
    accounts = app.extensions["callrec"].accounts
    accounts.add_user("admin", PASSWORD, "admin", None)
    headers = {"Authorization": f"Bearer {accounts.add_token('fuzz', 'supervisor', ['shop'], 'test')}"}
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 20
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            case.call_and_validate(headers=headers)
        fuzz()
    app.extensions["callrec"].close()


def _snapshot(catalogue) -> tuple:
    """What a refused change must leave as it was: the calls and the contacts."""
    with catalogue.read() as db:
        return ([tuple(row) for row in db.execute("SELECT * FROM calls ORDER BY id")],
                [tuple(row) for row in db.execute("SELECT * FROM contacts ORDER BY number")])


def test_bad_changes_are_refused_with_a_message_and_change_nothing(web_appliance):
    from schemathesis import GenerationMode
    from web import create_app

    config, _, _ = web_appliance
    app = create_app(config, secure_cookies=False)
    backend = app.extensions["callrec"]
    backend.directory.add(backend.directory.checked("025550101", "Dupont"), "test")
    headers = {"Authorization": f"Bearer {backend.accounts.add_token('fuzz', 'admin', None, 'test')}"}
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    changes = [result.ok() for result in schema.get_all_operations()
               if result.ok().method.upper() in ("PUT", "PATCH")
               or result.ok().path in ("/api/v1/contacts", "/api/v1/calls/{call_id}/hold")
               and result.ok().method.upper() == "POST"]
    assert len(changes) == 5
    refused = 0
    for operation in changes:
        @given(case=operation.as_strategy(GenerationMode.NEGATIVE))
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            nonlocal refused
            before = _snapshot(backend.catalogue)
            response = case.call(headers=headers)
            if response.status_code < 300:     # what the generator broke was not what the API reads
                return
            assert 400 <= response.status_code < 500, (case.path, case.body, response.status_code)
            assert response.json()["error"], response.text
            assert _snapshot(backend.catalogue) == before, (case.path, case.path_parameters, case.body)
            refused += 1
        fuzz()
    assert refused >= 200
    backend.close()
