"""The exported OpenAPI document (docs/openapi.json) matches what the code serves."""

from __future__ import annotations

import json

from services.intake.openapi import DOCUMENT, openapi_document, render


def test_exported_openapi_document_has_not_drifted() -> None:
    assert DOCUMENT.read_text(encoding="utf-8") == render(), (
        "docs/openapi.json is out of date: run "
        "`python -m services.intake --export-openapi docs/openapi.json` and commit it"
    )


def test_document_lists_the_surfaces_of_architecture_section_6() -> None:
    paths = openapi_document()["paths"]
    assert set(paths) >= {"/v1/tickets", "/v1/tickets/{ticket_id}"}
    # Operations endpoints live on the ops listener, never on the public API.
    assert not set(paths) & {"/healthz", "/metrics"}
    submit = paths["/v1/tickets"]["post"]
    assert set(submit["responses"]) >= {"202", "401", "403", "409", "413", "422", "429", "503"}
    assert submit["security"] == [{"IntegrationSignature": []}]
    assert paths["/v1/tickets/{ticket_id}"]["get"]["security"] == [{"IntegrationSignature": []}]
    scheme = openapi_document()["components"]["securitySchemes"]["IntegrationSignature"]
    assert scheme["in"] == "header"
    assert scheme["name"] == "X-Intervention-Signature"


def test_request_schema_is_the_helpdesk_request_with_resolvable_references() -> None:
    document = openapi_document()
    schemas = document["components"]["schemas"]
    request = schemas["HelpdeskTicketRequest"]
    assert set(request["required"]) >= {"ticket_id", "revision", "credentials", "authorization"}
    text = json.dumps(document)
    for ref in {part.split('"')[0] for part in text.split('"#/components/schemas/')[1:]}:
        assert ref in schemas, f"dangling $ref {ref}"
    assert "$defs" not in text
