"""The server's one error type: an HTTP status plus OpenAI's error body, so every refusal a client gets has the shape
its SDK parses: `{"error": {"message", "type", "param", "code"}}` (type / code values as OpenAI and vLLM use them)."""

from __future__ import annotations


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def timed_out(seconds: float) -> APIError:
    return APIError(
        504, f"the request did not finish within --request-timeout {seconds:g}s", type="timeout_error", code="timeout"
    )


def internal(err: BaseException) -> APIError:
    return APIError(
        500, f"internal error ({type(err).__name__}); the server log has the traceback", type="server_error"
    )


def shutting_down() -> APIError:
    return APIError(503, "the server is shutting down", type="server_error")
