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
