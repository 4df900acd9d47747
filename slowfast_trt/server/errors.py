"""Errors in OpenAI's JSON shape: ``{"error": {"message", "type", "param", "code"}}``.

Every failure a client can see goes through :class:`APIError`, so each has one status, one
line of message and no traceback. Status codes (and the OpenAI client exception each maps
to): 400 a request that cannot be served as sent (BadRequestError), 401 a missing or wrong
API key (AuthenticationError), 404 an unknown model, video or stream (NotFoundError), 413 a
body, upload, data URL or download over its limit, 422 a body that does not follow the
schema: wrong types, values out of range, unknown content types (UnprocessableEntityError),
429 a full queue (RateLimitError, with ``Retry-After``), 500 a bug on our side, 501 a
feature this build lacks, 504 a request that ran past its time limit.
"""

from __future__ import annotations

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    501: "not_implemented",
    504: "timeout_error",
}


class APIError(Exception):
    """An error answered to the client with ``status`` and one line of ``message``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = one_line(message)
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.status, self.message, param=self.param, code=self.code)


def one_line(message: object, limit: int = 500) -> str:
    """The first line of ``message``, cut to ``limit`` characters (never a traceback)."""
    text = str(message).strip().splitlines()[0] if str(message).strip() else "error"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": one_line(message), "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}
