"""Schemathesis against the gateway's own OpenAPI document, on a real server on loopback.

Generated requests (valid and invalid) hit every route; no response may be a 5xx, every
response must conform to the document (status, media type, body schema) and every error
must be in OpenAI's shape. Examples are bounded so the suite stays within CI's time.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks as st_checks

from tests.proxy.fake_upstream import make_upstream_app
from tests.proxy.servers import serve
from tokenskip.proxy.api.app import create_app
from tokenskip.proxy.infra.config import Settings, parse_config

KEY = "sk-schema-test"


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory):
    with serve(make_upstream_app()) as upstream:
        config = {
            "model_list": [
                {
                    "model_name": "ok",
                    "litellm_params": {
                        "model": "openai/ok",
                        "api_base": upstream + "/v1",
                        "api_key": "k",
                    },
                    "tokenskip": {"tokenizer": "smollm2"},
                }
            ],
        }
        settings_ = Settings(
            api_keys=KEY,
            ledger_url=f"sqlite:///{tmp_path_factory.mktemp('l') / 'l.db'}",
            max_body_bytes=256 * 1024,
        )
        app = create_app(settings_, parse_config(config, settings_))
        with serve(app) as url:
            yield url


@pytest.fixture(scope="module")
def api_schema(gateway_url):
    document = httpx.get(gateway_url + "/openapi.json").json()
    return schemathesis.openapi.from_dict(document)


def openai_error_shape(ctx, response, case):
    """Every 4xx/5xx body is ``{"error": {"message", "type", "param", "code"}}`` (on the
    Messages API: Anthropic's ``{"type": "error", "error": {"type", "message"}}``)."""
    if response.status_code >= 400 and case.path.startswith("/v1/messages"):
        body = response.json()
        assert body["type"] == "error" and body["error"]["message"], body
        assert response.status_code != 422  # Anthropic answers schema errors with 400
        return
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert {"message", "type", "param", "code"} <= set(body["error"]), body
        assert body["error"]["message"]


OPERATIONS = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/multi_query"),
    ("POST", "/v1/responses"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/count_tokens"),
    ("GET", "/v1/models"),
    ("GET", "/v1/savings"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
]


def test_the_document_lists_every_operation(api_schema):
    found = {(r.ok().method.upper(), r.ok().path) for r in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_5xx_and_responses_conform(api_schema, gateway_url, method, path):
    # schemathesis's own pytest plugin cannot parametrize from a fixture under pytest 9, so
    # each operation's strategy is driven by hypothesis here
    operation = next(
        r.ok()
        for r in api_schema.get_all_operations()
        if (r.ok().method.upper(), r.ok().path) == (method, path)
    )

    @given(case=operation.as_strategy())
    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case):
        case.call_and_validate(
            base_url=gateway_url,
            headers={"Authorization": f"Bearer {KEY}"},
            additional_checks=[openai_error_shape],
            # a schema-valid request may still name a model this gateway does not serve (404)
            excluded_checks=[st_checks.positive_data_acceptance],
            timeout=30,
        )

    check()
