"""Login and `/me` answers."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from accounts.roles import Role


class TokenOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "access_token": "eyJhbGciOi…",
                    "token_type": "bearer",
                    "expires_in": 3600,
                    "role": "operator",
                }
            ]
        }
    )

    access_token: str
    token_type: str = "bearer"  # noqa: S105  # the OAuth2 token type name
    expires_in: int
    role: Role


class PrincipalOut(BaseModel):
    subject: str
    role: Role
    via: str
