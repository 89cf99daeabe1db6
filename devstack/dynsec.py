"""`gridwatch stack up --dynsec`: the local Mosquitto with the dynamic-security plugin,
and the logins the demo needs, so `gridwatch run --demo` runs with broker authentication.

Opt-in; plain `stack up` is unchanged (anonymous loopback broker). With `--dynsec`:

1. the plugin's accounts file `<root>/mosquitto/dynamic-security.json` is created once
   (`mosquitto_ctrl dynsec init`) with a generated admin password, and the broker config
   loads the plugin and refuses anonymous clients;
2. once the broker runs, the hub's login (`gridwatch-hub`, role `gridwatch-hub`) and a
   simulator login for the demo sites (`gridwatch-demo`) are provisioned through
   `broker.dynsec` (deny-by-default ACLs: the hub reads the device topics `gw/v1/#` and
   publishes its presence and the security events `gw/events/v1/<site>`, topics from
   `sensors.topics`), with fresh passwords at every `stack up --dynsec`;
3. all three logins go to `<root>/mqtt-logins.toml` (mode 0600), which `gridwatch run`
   reads while that stack's broker is the one in `mqtt.url` and requires logins: the hub
   connects as `gridwatch-hub`, the API manages device logins as the admin
   (`registry.dynsec`), and `--demo` devices publish as `gridwatch-demo`. Settings that
   name a login themselves (`mqtt.username`, `registry.dynsec`) are left alone.

Devices registered through the API then get logins of their own on this broker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from broker.dynsec import (
    PLUGIN_PATH,
    AdminLogin,
    BrokerAccounts,
    Credentials,
    DynsecClient,
    DynsecError,
    broker_conf,
    init_config,
    new_password,
)
from devstack.stack import (
    CLIENT_PACKAGES,
    HOST,
    MOSQUITTO_PACKAGES,
    LocalStack,
    StackError,
    ensure_installed,
)
from sensors.topics import DEFAULT_PREFIX
from sites.model import DEMO_SITES

log = logging.getLogger(__name__)

LOGINS_NAME: Final = "mqtt-logins.toml"
ACCOUNTS_NAME: Final = "dynamic-security.json"
ADMIN_USERNAME: Final = "gridwatch-admin"
HUB_USERNAME: Final = "gridwatch-hub"
SIMULATOR_USERNAME: Final = "gridwatch-demo"
CTRL_BIN: Final = "/usr/bin/mosquitto_ctrl"


@dataclass(frozen=True, slots=True)
class Login:
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class StackLogins:
    """What `stack up --dynsec` provisioned (read back by `gridwatch run`)."""

    admin: Login
    hub: Login
    simulator: Login
    sites: tuple[str, ...]


_NONE: Final = Login("", "")
"""A login not provisioned yet (the admin's is saved before the broker starts)."""


def logins_path(root: Path) -> Path:
    return root / LOGINS_NAME


def accounts_path(root: Path) -> Path:
    return root / "mosquitto" / ACCOUNTS_NAME


def uses_dynsec(stack: LocalStack) -> bool:
    """Whether the stack's broker config (rewritten at every start) loads the plugin."""
    conf = stack.root / "mosquitto" / "mosquitto.conf"
    try:
        return f"plugin {PLUGIN_PATH}" in conf.read_text().splitlines()
    except OSError:
        return False


def _admin_password(root: Path) -> str:
    """The admin password of the accounts file: made with it the first time, then read
    back from the logins file (the broker keeps only a hash)."""
    accounts, logins = accounts_path(root), logins_path(root)
    if accounts.exists():
        if not logins.exists():
            raise StackError(
                f"{accounts} exists but {logins} (its admin password) does not: "
                f"remove {accounts} to start the broker's accounts afresh"
            )
        return read_logins(logins).admin.password
    password = new_password()
    try:
        init_config(accounts, ADMIN_USERNAME, password)
    except (DynsecError, FileNotFoundError, FileExistsError) as exc:
        raise StackError(f"cannot create {accounts}: {exc}") from exc
    # Saved at once: without it the accounts file could never be administered again.
    write_logins(logins, StackLogins(Login(ADMIN_USERNAME, password), _NONE, _NONE, ()))
    return password


def dynsec_up(stack: LocalStack, topic_prefix: str = DEFAULT_PREFIX) -> dict[str, str]:
    """Start the stack with the plugin (what is not running yet) and provision logins."""
    ensure_installed({**MOSQUITTO_PACKAGES, **CLIENT_PACKAGES, CTRL_BIN: "mosquitto-clients"})
    running = stack.status()["mosquitto"]["running"]
    if running and not uses_dynsec(stack):
        raise StackError(
            "mosquitto already runs without dynamic security: `gridwatch stack down` first"
        )
    admin_password = _admin_password(stack.root)
    stack.mosquitto_extra_conf = broker_conf(accounts_path(stack.root).resolve())
    report = stack.up()
    admin = Login(ADMIN_USERNAME, admin_password)
    try:
        hub, simulator = asyncio.run(
            provision(stack.ports["mosquitto"], admin, topic_prefix, DEMO_SITES)
        )
    except DynsecError as exc:
        raise StackError(f"provisioning broker logins failed: {exc}") from exc
    logins = StackLogins(admin, _login(hub), _login(simulator), DEMO_SITES)
    write_logins(logins_path(stack.root), logins)
    report["logins"] = (
        f"{HUB_USERNAME} (hub), {SIMULATOR_USERNAME} (demo sites {', '.join(DEMO_SITES)}), "
        f"{ADMIN_USERNAME} (dynamic-security admin) in {logins_path(stack.root)}"
    )
    return report


def _login(credentials: Credentials) -> Login:
    return Login(credentials.username, credentials.password)


async def provision(
    port: int, admin: Login, topic_prefix: str, sites: tuple[str, ...]
) -> tuple[Credentials, Credentials]:
    """Deny by default, then the hub's and the demo simulator's logins (fresh passwords)."""
    client = DynsecClient(AdminLogin(HOST, port, admin.username, admin.password))
    accounts = BrokerAccounts(client, topic_prefix=topic_prefix)
    await accounts.prepare()
    hub = await accounts.register_hub(HUB_USERNAME)
    simulator = await accounts.register_simulator(SIMULATOR_USERNAME, sites)
    return hub, simulator


def write_logins(path: Path, logins: StackLogins) -> None:
    """TOML, owner-only, replaced atomically (a crash never leaves half a file)."""

    def section(name: str, login: Login) -> list[str]:
        return [f"[{name}]", f"username = {json.dumps(login.username)}",
                f"password = {json.dumps(login.password)}"]  # fmt: skip

    lines = [
        "# Written by `gridwatch stack up --dynsec`; `gridwatch run` reads it. Secrets.",
        *section("admin", logins.admin),
        *section("hub", logins.hub),
        *section("simulator", logins.simulator),
        f"sites = {json.dumps(list(logins.sites))}",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def read_logins(path: Path) -> StackLogins:
    """The logins file; a damaged one is a StackError naming the file."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
        return StackLogins(
            Login(**data["admin"]),
            Login(**{k: data["hub"][k] for k in ("username", "password")}),
            Login(**{k: data["simulator"][k] for k in ("username", "password")}),
            tuple(data["simulator"].get("sites", [])),
        )
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise StackError(f"unreadable logins file {path}: {exc}") from exc
