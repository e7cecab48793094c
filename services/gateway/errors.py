"""Every error the gateway answers is a JSON body with a machine-readable code and a reason a person can read."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse


class GatewayError(Exception):
    """An HTTP error with its JSON body; ``close`` when the request body was not read to its end."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        request_id: str | None = None,
        retry_after_s: int | None = None,
        close: bool = False,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, str | float] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.request_id, self.retry_after_s, self.close = request_id, retry_after_s, close
        self.headers = dict(headers or {})  # e.g. a 405's Allow
        self.extra = dict(extra or {})  # more fields of the body, e.g. a deadline_exceeded's stage and late_ms

    def response(self, *, protocol: bool = False) -> JSONResponse:
        """The JSON error; ``protocol``: as the Open Inference Protocol has it, ``error`` the message a person
        reads (its clients show that field), the code in ``code``."""
        headers = dict(self.headers)
        if self.close:  # the rest of the body is unread: this connection cannot carry another request
            headers["Connection"] = "close"
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(self.retry_after_s)
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        body: dict[str, str | float] = {"error": self.code, "detail": self.detail, **self.extra}
        if protocol:
            body = {"error": f"{self.code}: {self.detail}", "code": self.code, **self.extra}
        if self.request_id is not None:
            body["request_id"] = self.request_id
            headers["X-Request-Id"] = self.request_id
        return JSONResponse(body, status_code=self.status, headers=headers)
