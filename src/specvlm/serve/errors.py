"""The server's one error type: an HTTP status plus OpenAI's error body, so every refusal a client gets has the shape
its SDK parses: `{"error": {"message", "type", "param", "code"}}` (type / code values as OpenAI and vLLM use them)."""

from __future__ import annotations

MAX_MESSAGE_CHARS = 500  # an error message may quote what the client sent (a value, a name): never all of it
BODY_TIMEOUT_S = 60.0  # a request body must have arrived this long after its headers (nginx's client_body_timeout)


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        message = clip(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, marked when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def loggable(text: str, limit: int = 200) -> str:
    """What a log line may show of a client-controlled string: one line (newlines and other control characters
    escaped, so a client cannot forge log lines) of at most `limit` characters."""
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[: limit + 1])
    return clip(escaped, limit)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def timed_out(seconds: float) -> APIError:
    return APIError(
        504, f"the request did not finish within --request-timeout {seconds:g}s", type="timeout_error", code="timeout"
    )


def body_timeout(seconds: float) -> APIError:
    return APIError(408, f"the request body did not arrive within {seconds:g} s", code="body_timeout")


def internal(err: BaseException) -> APIError:
    return APIError(
        500, f"internal error ({type(err).__name__}); the server log has the traceback", type="server_error"
    )


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down", type="server_error")
