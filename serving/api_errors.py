"""Errors of the OpenAI-compatible routes, in OpenAI's shape {"error": {"message", "type", "param", "code"}}.

    python -c "from serving.api_errors import error_json as e; print(e(404, 'no model', 'invalid_request_error').body)"

Handlers raise `APIError`; `install_error_handlers` turns it, Starlette's 404/405 and any unexpected exception
into that shape, so every client mistake is a 4xx a client library can read.
"""
from __future__ import annotations

import math

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .backend_api import BackendClosedError, BackendError, PromptValidationError, QueueFullError


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers


def error_json(status: int, message: str, type_: str, param=None, code=None, headers=None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def backend_error(exc: BackendError, max_param: str) -> APIError:
    """The HTTP answer to a backend's refusal; `max_param` names the request's max tokens field."""
    if isinstance(exc, PromptValidationError):
        param = max_param if exc.param == "max_tokens" else exc.param
        return APIError(400, exc.message, param=param, code="invalid_value")
    if isinstance(exc, QueueFullError):
        return APIError(429, str(exc), type_="rate_limit_error", code="rate_limit_exceeded",
                        headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))})
    if isinstance(exc, BackendClosedError):
        return APIError(503, str(exc), type_="server_error", code="shutting_down")
    return APIError(500, "generation failed", type_="server_error")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_req, exc: APIError):
        return error_json(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_req, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_json(exc.status_code, str(exc.detail), "invalid_request_error", None, code)

    @app.exception_handler(Exception)
    async def _unexpected(_req, _exc: Exception):
        return error_json(500, "internal server error", "server_error")
