"""Schemathesis against the live API and its OpenAPI schema, with a key: no 5xx, and every response (errors
included) has a documented status, content type, headers and body.

The schema is loaded when the tests are collected, before the stack is up, from the app object the stack
serves; the first test checks that the live API serves exactly that schema. (Schemathesis's fixture-based
loader does not work with this pytest.)
"""

import uuid

import httpx
import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import app
from tests.service.conftest import new_key

CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
# Valid and invalid requests, the same ones at every run; a few dozen per operation keeps it under a minute.
CONFIG = SchemathesisConfig.from_dict({
    "seed": 20261204,
    "generation": {"max-examples": 25, "deterministic": True, "database": "none"},
    "phases": {"stateful": {"enabled": False}},
})


@pytest.fixture(scope="module")
def auth_header(stack) -> dict[str, str]:
    """A tenant of its own, so that whatever the generated requests create stays apart from other tests."""
    return {"Authorization": f"Bearer {new_key(stack, f'schema-{uuid.uuid4().hex[:8]}')}"}


schema = schemathesis.openapi.from_dict(app.openapi(), config=CONFIG)


def test_the_live_api_serves_the_tested_schema(stack):
    assert httpx.get(f"{stack.url}/openapi.json").json() == app.openapi()


@schema.parametrize()
def test_api_conforms_to_its_schema(case, stack, auth_header):
    case.call_and_validate(base_url=stack.url, headers=auth_header, checks=CHECKS)
