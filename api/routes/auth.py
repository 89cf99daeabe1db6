"""The login route (OAuth2 password flow → bearer JWT) and `/me`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request

from accounts.roles import PEOPLE_AND_INTEGRATIONS
from api.deps import get_deps
from api.problems import problem_responses
from api.roles import Principal, check_password_login, issue_token, public, requires
from api.schemas.auth import PrincipalOut, TokenOut

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


@router.post(
    "/token",
    dependencies=[Depends(public())],
    responses=problem_responses(401, 422, 429),
    summary="Log in (OAuth2 password flow) and get a bearer token",
)
def login(
    request: Request,
    username: Annotated[str, Form(min_length=1, max_length=64)],
    password: Annotated[str, Form(min_length=1, max_length=1024)],
) -> TokenOut:
    deps = get_deps(request)
    user = check_password_login(request, username, password)
    token, lifetime = issue_token(deps, user.username, user.role)
    return TokenOut(access_token=token, expires_in=lifetime, role=user.role)


@router.get("/me", responses=problem_responses(401, 403), summary="Who the token belongs to")
def me(
    principal: Annotated[Principal, Depends(requires(*PEOPLE_AND_INTEGRATIONS))],
) -> PrincipalOut:
    return PrincipalOut(subject=principal.subject, role=principal.role, via=principal.via)
