"""`GET /openapi.json`: the API's OpenAPI 3.1 schema, for clients, tools and the fuzz test.

FastAPI writes the routes; the chat route reads its body itself (a 429 before the body is read, a 413 while it is
read, a 400 naming the field), so its request body is described here from the same pydantic model that validates
it, with the one model this server serves as the only `model` value. A message's `content` is validated part by part
after the model (schema.chat_turn), so the schema gives it as a string or a list of parts."""

from __future__ import annotations

from fastapi.openapi.utils import get_openapi

from .errors import BODY_TIMEOUT_S
from .schema import PARTS, ROLES, ChatRequest

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
CHAT_ERRORS = {
    "400": "the request is malformed or asks what cannot be served (the message names the field)",
    "401": "missing or wrong API key",
    "404": "unknown model",
    "408": f"the body did not arrive within {BODY_TIMEOUT_S:g} s of the headers",
    "413": "the body is larger than --max-request-bytes",
    "415": "the body is not sent as application/json",
    "429": "the queue is full; retry later",
    "499": "the client went away (never read)",
    "503": "the server is shutting down",
    "504": "the request did not finish within --request-timeout",
}


def openapi_schema(app, chat_path: str, model_name: str, version: str) -> dict:
    schema = get_openapi(title=app.title, version=version, routes=app.routes)
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    template = "#/components/schemas/{model}"
    body = ChatRequest.model_json_schema(ref_template=template)
    parts = PARTS.json_schema(ref_template=template)
    schemas.update(body.pop("$defs", {}), **parts.pop("$defs", {}))
    body["properties"]["model"] = {"type": "string", "enum": [model_name], "title": "Model"}
    message = schemas["Message"]["properties"]
    message["role"]["enum"] = list(ROLES)
    message["content"] = {"anyOf": [{"type": "string"}, parts], "title": "Content"}
    schemas["ChatRequest"], schemas["Error"] = body, ERROR
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    chat = schema["paths"][chat_path]["post"]
    chat["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}},
    }
    chat["responses"] = {
        "200": {
            "description": "a chat.completion object; with stream: true, Server-Sent Events of chat.completion.chunk "
            "objects ending with data: [DONE]",
            "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}},
        },
        **{status: {"description": why, **error} for status, why in CHAT_ERRORS.items()},
    }
    return schema
