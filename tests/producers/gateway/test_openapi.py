"""The gateway's OpenAPI document, checked by schemathesis: requests generated from
it (valid and invalid) go to the app in process; every answer must be one the
document describes, and none a server error."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from tests.producers.gateway.conftest import BILLING_KEY, Gateway, build_gateway, write_policy

#: Examples per operation: bounded, so it stays a few seconds in ``make test``
#: (``GATEWAY_SCHEMATHESIS_EXAMPLES=300`` for a longer hunt).
MAX_EXAMPLES = int(os.environ.get("GATEWAY_SCHEMATHESIS_EXAMPLES", "25"))

with tempfile.TemporaryDirectory() as _folder:
    # A body of more than 1,000 commands fits: its answer is 422 (schema), not 413 (size).
    GATEWAY = build_gateway(write_policy(Path(_folder)), max_body_bytes=8 * 1024 * 1024)
# A schema-valid command may still be refused with 422: the window its issued_at must
# lie in (retention, clock skew) moves with the clock, which no JSON Schema can say.
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "401", "403", "404", "409", "422"]
            }
        }
    }
)
schema = schemathesis.openapi.from_asgi("/openapi.json", GATEWAY.client.app, config=CONFIG)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_answer_conforms_to_the_document(case: schemathesis.Case) -> None:
    # Given a generated request with a valid API key
    # When it is sent, then its answer matches the document and is no server error
    case.call_and_validate(headers={"Authorization": f"Bearer {BILLING_KEY}"})


def test_the_document_has_examples_and_problem_answers(gateway: Gateway) -> None:
    # When the document is read
    document = gateway.client.get("/openapi.json").json()
    post = document["paths"]["/v1/commands"]["post"]
    # Then the request has examples, and error answers are problem documents
    assert post["requestBody"]["content"]["application/json"]["examples"]
    for code in ("401", "403", "409", "422", "503"):
        assert "application/problem+json" in post["responses"][code]["content"]
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
