"""One exception hierarchy for the API, mapped to RFC 9457 problem responses in one place.

Handlers raise `ApiError` subclasses (or let a domain exception from events/ or registry/
escape); `install(app)` registers the only handlers that turn them into
`application/problem+json`. Nothing else in the API builds an error body by hand, so
every refusal a client sees has the same shape: type, title, status, detail, instance,
plus extra members (`errors` for invalid input, `event_id`/`state` for lifecycle
refusals).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from broker.dynsec import DynsecError
from events.model import ForbiddenTransition
from events.store import StaleEvent, StoreError, UnknownEvent
from registry import errors as registry_errors

PROBLEM_JSON: Final = "application/problem+json"
TYPE_BASE: Final = "https://gridwatch.invalid/problems/"
"""Problem type URIs: identifiers, not links (RFC 9457 allows non-dereferenceable URIs)."""


class ApiError(Exception):
    """Base of every refusal the API reports; subclasses fix status, type and title."""

    status: int = 500
    slug: str = "internal"
    title: str = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra: dict[str, Any] = extra
        self.headers: dict[str, str] = {}


class InvalidInput(ApiError):
    """The request is well-formed HTTP but its content is refused; `errors` says where."""

    status = 422
    slug = "invalid-input"
    title = "Invalid input"

    def __init__(self, detail: str, errors: Sequence[Mapping[str, Any]] = (), **extra: Any) -> None:
        super().__init__(detail, errors=[dict(e) for e in errors], **extra)


class BadRequest(ApiError):
    status = 400
    slug = "bad-request"
    title = "Bad request"


class Unauthorized(ApiError):
    status = 401
    slug = "unauthorized"
    title = "Authentication required"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers["WWW-Authenticate"] = "Bearer"


class LoginRequired(Unauthorized):
    """A desk page without a session: answered with a redirect to the login form."""

    def __init__(self, next_url: str) -> None:
        super().__init__("log in to use the event desk")
        self.next_url = next_url


class Forbidden(ApiError):
    status = 403
    slug = "forbidden"
    title = "Forbidden"


class NotFound(ApiError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(ApiError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class PayloadTooLarge(ApiError):
    """The request body is larger than the route accepts (refused before it is read)."""

    status = 413
    slug = "payload-too-large"
    title = "Payload too large"

    def __init__(self, detail: str, limit_bytes: int, **extra: Any) -> None:
        super().__init__(detail, limit_bytes=limit_bytes, **extra)


class TooManyRequests(ApiError):
    status = 429
    slug = "too-many-requests"
    title = "Too many requests"

    def __init__(self, detail: str, retry_after_s: int, **extra: Any) -> None:
        super().__init__(detail, retry_after_s=retry_after_s, **extra)
        self.headers["Retry-After"] = str(retry_after_s)


class Unavailable(ApiError):
    status = 503
    slug = "unavailable"
    title = "Service unavailable"


class Problem(BaseModel):
    """RFC 9457 problem details, as documented in the OpenAPI schema."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": TYPE_BASE + "not-found",
                    "title": "Not found",
                    "status": 404,
                    "detail": "no event 4f1c…",
                    "instance": "/api/v1/events/4f1c",
                }
            ]
        },
    )

    type: str = Field(description="URI identifying the problem type")
    title: str
    status: int
    detail: str
    instance: str


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries for the problem statuses a route can return."""
    return {
        status: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": _REASONS[status]}
        for status in statuses
    }


_REASONS: Final = {
    400: "Bad request",
    401: "Not authenticated",
    403: "Role not allowed",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Request body too large",
    422: "Invalid input",
    429: "Too many requests",
    503: "A dependency is unavailable",
}


# Domain exceptions from the lower layers, mapped here and nowhere else.
DomainMapper = Callable[[Exception], ApiError]


def _forbidden_transition(exc: Exception) -> ApiError:
    assert isinstance(exc, ForbiddenTransition)
    return Conflict(str(exc), event_id=exc.event_id, action=exc.action.value, state=exc.state.value)


def _stale(exc: Exception) -> ApiError:
    assert isinstance(exc, StaleEvent)
    return Conflict(str(exc), event_id=exc.event_id)


def _unknown(exc: Exception) -> ApiError:
    assert isinstance(exc, UnknownEvent)
    return NotFound(str(exc), event_id=exc.event_id)


def _store(exc: Exception) -> ApiError:
    return Unavailable(f"event store: {exc}")


def _registry_not_found(exc: Exception) -> ApiError:
    assert isinstance(exc, registry_errors.NotFound)
    return NotFound(str(exc), entity=exc.entity, id=exc.ident)


def _registry_invalid(exc: Exception) -> ApiError:
    assert isinstance(exc, registry_errors.Invalid)
    return InvalidInput(str(exc), [p.as_dict() for p in exc.problems], source=exc.source)


def _registry_conflict(exc: Exception) -> ApiError:
    return Conflict(str(exc))


DOMAIN_ERRORS: Final[dict[type[Exception], DomainMapper]] = {
    ForbiddenTransition: _forbidden_transition,
    StaleEvent: _stale,
    UnknownEvent: _unknown,
    StoreError: _store,
    registry_errors.NotFound: _registry_not_found,
    registry_errors.Invalid: _registry_invalid,
    registry_errors.Conflict: _registry_conflict,
    registry_errors.RegistryError: _registry_conflict,
    DynsecError: lambda exc: Unavailable(f"broker credentials: {exc}"),
}
"""Most specific first: lookup walks the exception's MRO."""


def to_api_error(exc: Exception) -> ApiError | None:
    """The API error for a domain exception, or None when it is not one we map."""
    if isinstance(exc, ApiError):
        return exc
    for klass in type(exc).__mro__:
        mapper = DOMAIN_ERRORS.get(klass)
        if mapper is not None:
            return mapper(exc)
    return None


def problem_response(error: ApiError, instance: str) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_BASE + error.slug,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "instance": instance,
    }
    body.update(error.extra)
    return JSONResponse(
        body, status_code=error.status, media_type=PROBLEM_JSON, headers=error.headers
    )


def error_response(error: ApiError, instance: str) -> Response:
    """The response for a refusal: a problem document, or the desk's login redirect."""
    if isinstance(error, LoginRequired):
        target = "/desk/login?" + urlencode({"next": error.next_url})
        return RedirectResponse(target, status_code=303)
    return problem_response(error, instance)


def install(app: FastAPI) -> None:
    """Register the problem handlers: the one place errors become HTTP responses."""

    async def on_api_error(request: Request, exc: Exception) -> Response:
        error = to_api_error(exc)
        assert error is not None
        return error_response(error, request.url.path)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"loc": [str(part) for part in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        return problem_response(InvalidInput("the request is invalid", errors), request.url.path)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error = _http_error(exc.status_code, str(exc.detail))
        if exc.headers:
            error.headers.update(exc.headers)
        return problem_response(error, request.url.path)

    app.add_exception_handler(ApiError, on_api_error)
    for domain in DOMAIN_ERRORS:
        app.add_exception_handler(domain, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)


def _http_error(status: int, detail: str) -> ApiError:
    """Starlette's own refusals (unknown route, wrong method) as problems too.

    FastAPI's only 400 is a body it cannot decode (e.g. not UTF-8): that is invalid
    input like any malformed JSON, which FastAPI itself answers with 422.
    """
    if status == 400:
        return InvalidInput(detail, [{"loc": ["body"], "msg": detail}])
    for klass in (Forbidden, NotFound, Conflict, Unavailable):
        if klass.status == status:
            return klass(detail)
    error = ApiError(detail)
    error.status, error.slug, error.title = status, f"http-{status}", detail
    return error
