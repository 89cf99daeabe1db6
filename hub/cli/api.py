"""`gridwatch serve` (the HTTP API on its own) and `gridwatch users ...` (people and keys).

`gridwatch run` serves the same API inside the hub (see `api_server`). Heavy modules are
imported inside the commands so `gridwatch --help` stays fast.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click

from accounts.roles import Role
from hub.cli.options import config_option, load

if TYPE_CHECKING:
    from accounts.users import UserStore

ROLES = tuple(role.value for role in Role)

_CONFIG = config_option(help="TOML settings file (users live in [events] store_url's database).")


# ---------------------------------------------------------------------- serving


@click.command("serve")
@_CONFIG
@click.option("--host", default=None, help="Listen address [default: api.host, 127.0.0.1]")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="[default: api.port, 18080]"
)
def serve(config_path: Path | None, host: str | None, port: int | None) -> None:
    """Serve the HTTP API (event desk, reports, registry) until Ctrl-C.

    `gridwatch run` serves it too, inside the hub; run this one for an API on another
    machine or process against the same database.
    """
    from api.server import api_server, close_api
    from hub.serving import build_api

    settings = load(config_path)
    app, deps = build_api(settings)
    server = api_server(app, host or settings.api.host, port or settings.api.port, embedded=False)
    click.echo(
        f"serving the GridWatch API on http://{server.config.host}:{server.config.port} "
        "(docs at /docs, desk at /desk/)",
        err=True,
    )
    try:
        server.run()
    except KeyboardInterrupt:
        pass  # uvicorn re-raises Ctrl-C after its clean shutdown: that is a normal exit
    finally:
        close_api(deps, store_too=True)


# ---------------------------------------------------------------------- users


@contextlib.contextmanager
def _users(config_path: Path | None) -> Iterator[UserStore]:
    """The migrated user store; a refused operation becomes the command's error message."""
    from accounts.users import UserStore, UserStoreError
    from hub.wiring import store_url

    settings = load(config_path)
    Path(settings.hub.data_dir).mkdir(parents=True, exist_ok=True)
    store = UserStore(store_url(settings))
    try:
        store.migrate()
        yield store
    except UserStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    value: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


@click.group("users")
def users() -> None:
    """API users (people, argon2-hashed passwords) and API keys (machines)."""


@users.command("add")
@_CONFIG
@click.argument("username")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
def users_add(config_path: Path | None, username: str, role: str, password_stdin: bool) -> None:
    """Create a user (e.g. the first admin)."""
    with _users(config_path) as store:
        store.add_user(username, _password(password_stdin), Role(role))
    click.echo(f"created {role} {username}")


@users.command("passwd")
@_CONFIG
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin.")
def users_passwd(config_path: Path | None, username: str, password_stdin: bool) -> None:
    """Set a user's password."""
    with _users(config_path) as store:
        store.set_password(username, _password(password_stdin))
    click.echo(f"password of {username} changed")


@users.command("disable")
@_CONFIG
@click.argument("username")
@click.option("--enable", is_flag=True, help="Enable again instead.")
def users_disable(config_path: Path | None, username: str, enable: bool) -> None:
    """Refuse a user's logins (tokens already issued run out within api.token_lifetime_s)."""
    with _users(config_path) as store:
        store.set_disabled(username, not enable)
    click.echo(f"{username} {'enabled' if enable else 'disabled'}")


@users.command("list")
@_CONFIG
def users_list(config_path: Path | None) -> None:
    """Users and API keys."""
    with _users(config_path) as store:
        for user in store.list_users():
            state = " (disabled)" if user.disabled else ""
            click.echo(f"user {user.username:24} {user.role.value:10}{state}")
        for key in store.api_keys():
            state = " (revoked)" if key.revoked else ""
            click.echo(f"key  {key.id:24} {key.role.value:10} {key.name} → {key.subject}{state}")


@users.command("key-add")
@_CONFIG
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--subject", default=None, help="Who acts through the key [default: NAME]")
def users_key_add(config_path: Path | None, name: str, role: str, subject: str | None) -> None:
    """Create an API key; the key is printed once, on stdout."""
    with _users(config_path) as store:
        key, plaintext = store.add_key(name, Role(role), subject or name)
    click.echo(f"created API key {key.id} ({role}, acting as {key.subject}); shown once:", err=True)
    click.echo(plaintext)


@users.command("key-revoke")
@_CONFIG
@click.argument("key_id")
def users_key_revoke(config_path: Path | None, key_id: str) -> None:
    """Revoke an API key at once."""
    with _users(config_path) as store:
        store.revoke_key(key_id)
    click.echo(f"revoked {key_id}")
