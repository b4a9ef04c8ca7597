"""What every route of the GCP emulator shares: Compute's error bodies and reading a JSON body."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dumont.localcloud.daemon import json_response
from dumont.localcloud.emulators.gcp_resources import error_body

API = "/compute/v1"


class ApiError(Exception):
    """An error the route answers with, as the Compute API words it (``reason`` is GCE's, e.g. notFound)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message

    def response(self) -> web.Response:
        """The HTTP answer."""
        return json_response(error_body(self.status, self.reason, self.message), status=self.status)


class OperationFailed(Exception):
    """Work that failed the way GCE reports inside a DONE operation (e.g. 403 QUOTA_EXCEEDED)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.error = (status, code, message)


def not_found(resource: str) -> ApiError:
    """GCE's 404 for ``resource`` (``projects/P/zones/Z/instances/N``)."""
    return ApiError(404, "notFound", f"The resource '{resource}' was not found")


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request's JSON object (an empty body is ``{}``); 400 parseError for anything else."""
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "parseError", "The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "parseError", "The request body must be a JSON object")
    return body


@web.middleware
async def api_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Turn an :class:`ApiError` raised by a route into its answer."""
    try:
        response: web.StreamResponse = await handler(request)
    except ApiError as exc:
        return exc.response()
    return response
