"""Broker credentials through Mosquitto's dynamic-security plugin: one adapter, one place.

The plugin is managed by publishing JSON `{"commands": [...]}` to
`$CONTROL/dynamic-security/v1` and reading `{"responses": [...]}` (matched by
`correlationData`) on `$CONTROL/dynamic-security/v1/response`. We speak it with the
project's own MQTT client (`broker.client`), one short connection per batch of
commands: registrations are rare, and a connection that lives only for a request needs
no supervisor, cannot go stale, and cannot take over another admin's session.

Identities and what they may do (topics from `sensors.topics` for `mqtt.topic_prefix`,
`gw/v1` by default):

- a device: username = client id = device id, role `device:<id>`: publish and read
  only `gw/v1/<site>/<kind>/<id>/#`; never publish under the hub's reserved topics
  (`gw/v1/_hub/#`, `gw/events/v1/#`: explicit denies first in the role, so no other
  grant of the client, present or future, lets a device pose as the hub);
- the hub: `mqtt.username`, role `gridwatch-hub`: read `gw/v1/#` (also as a shared
  group), publish `gw/v1/_hub/#` (its status) and `gw/events/v1/+` (the security
  events, outside what it reads);
- a simulator: a chosen username, role `gridwatch-sim:<sites>`: publish `gw/v1/<site>/#`
  (with the same denies as a device);
- an events reader (operators' tools, integrations): role `gridwatch-events-reader`:
  read `gw/events/v1/+`, nothing else.

The default ACL access is set to deny everything but unsubscribing, so a client reads
and writes only what a role grants. Passwords are generated here, returned once, and
never stored by GridWatch (the broker keeps a salted PBKDF2 hash).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from broker.client import ConnectOptions, MqttClient, MqttError
from sensors.topics import (
    DEFAULT_PREFIX,
    events_filter,
    events_root,
    hub_presence_filter,
    normalise_prefix,
    site_filter,
    subscription,
    subtree,
)

log = logging.getLogger(__name__)

CONTROL_TOPIC: Final = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC: Final = "$CONTROL/dynamic-security/v1/response"
PLUGIN_PATH: Final = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
HUB_ROLE: Final = "gridwatch-hub"
EVENTS_READER_ROLE: Final = "gridwatch-events-reader"
PASSWORD_BYTES: Final = 24
ALREADY_EXISTS: Final = ("already exists",)
RESERVED_PRIORITY: Final = 100
"""Priority of the denies on the hub's reserved topics: checked before any grant."""


class DynsecError(Exception):
    """The plugin refused a command (the message is the plugin's own error text)."""

    def __init__(self, command: str, error: str) -> None:
        super().__init__(f"dynamic security {command}: {error}")
        self.command = command
        self.error = error


class DynsecUnavailable(DynsecError):
    """The broker could not be reached, refused our admin login, or did not answer."""

    def __init__(self, detail: str) -> None:
        super().__init__("connection", detail)


@dataclass(frozen=True, slots=True)
class AdminLogin:
    """How the hub reaches the broker as the dynamic-security administrator."""

    host: str
    port: int
    username: str
    password: str
    tls: ssl.SSLContext | None = None
    timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Acl:
    acltype: str
    """publishClientSend, publishClientReceive, subscribePattern, subscribeLiteral, ..."""
    topic: str
    allow: bool = True
    priority: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "acltype": self.acltype,
            "topic": self.topic,
            "allow": self.allow,
            "priority": self.priority,
        }


@dataclass(frozen=True, slots=True)
class Credentials:
    """A new MQTT login; the password exists only in this object (shown once)."""

    username: str
    password: str
    client_id: str | None
    role: str


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def device_role(device_id: str) -> str:
    return f"device:{device_id}"


def reserved_denies(prefix: str = DEFAULT_PREFIX) -> list[Acl]:
    """What only the hub publishes: its presence (`<prefix>/_hub/#`) and the security
    events (`<events root>/#`), denied first in every role that is not the hub's."""
    return [
        Acl("publishClientSend", hub_presence_filter(prefix), False, RESERVED_PRIORITY),
        Acl("publishClientSend", subtree(events_root(prefix)), False, RESERVED_PRIORITY),
    ]


def device_acls(topic_root: str, prefix: str = DEFAULT_PREFIX) -> list[Acl]:
    """A device publishes and reads its own topics (`sensors.topics.device_root`),
    nothing else, and never the hub's reserved topics."""
    own = subtree(topic_root)
    return [
        *reserved_denies(prefix),
        Acl("publishClientSend", own),
        Acl("subscribePattern", own),
        Acl("publishClientReceive", own),
    ]


def hub_acls(prefix: str = DEFAULT_PREFIX) -> list[Acl]:
    """The hub reads every device topic (also as a shared group) and publishes its own
    status and the sites' event streams."""
    return [
        Acl("subscribePattern", subscription(prefix)),
        Acl("subscribePattern", subscription(prefix, "+")),
        Acl("publishClientReceive", subscription(prefix)),
        Acl("publishClientSend", hub_presence_filter(prefix)),
        Acl("publishClientSend", events_filter(prefix)),
    ]


def events_reader_acls(prefix: str = DEFAULT_PREFIX) -> list[Acl]:
    """Operators' tools and integrations read every site's security events, nothing else."""
    return [
        Acl("subscribePattern", events_filter(prefix)),
        Acl("publishClientReceive", events_filter(prefix)),
    ]


def simulator_acls(sites: Iterable[str], prefix: str = DEFAULT_PREFIX) -> list[Acl]:
    """A simulator speaks for every device of its sites (as each, or through gateways),
    never for the hub."""
    return [
        *reserved_denies(prefix),
        *(Acl("publishClientSend", site_filter(prefix, site)) for site in sites),
    ]


class DynsecClient:
    """Sends command batches to the plugin and returns its answers, one connection each."""

    def __init__(self, login: AdminLogin) -> None:
        self._login = login

    async def execute(
        self, commands: Sequence[Mapping[str, Any]], *, tolerate: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        """Run commands in order; raise DynsecError on the first refusal not tolerated.

        `tolerate` lists fragments of error texts that count as success (e.g. "already
        exists" makes a create idempotent).
        """
        if not commands:
            return []
        tagged = [dict(c, correlationData=uuid.uuid4().hex) for c in commands]
        wanted = {c["correlationData"] for c in tagged}
        answers: dict[str, dict[str, Any]] = {}
        done = asyncio.Event()

        def on_publish(topic: str, payload: bytes, _qos: int, _retain: bool, _pid: int) -> None:
            if topic != RESPONSE_TOPIC:
                return
            try:
                responses = json.loads(payload).get("responses", [])
            except (ValueError, AttributeError):
                log.warning("dynamic security sent a response that is not JSON: %r", payload[:200])
                return
            for response in responses:
                corr = response.get("correlationData")
                if corr in wanted:
                    answers[corr] = response
            if wanted <= answers.keys():
                done.set()

        login = self._login
        client = MqttClient(
            login.host,
            login.port,
            ConnectOptions(
                client_id=f"gridwatch-dynsec-{uuid.uuid4().hex[:12]}",
                clean_start=True,
                session_expiry_s=0,
                username=login.username,
                password=login.password,
            ),
            subscriptions=[(RESPONSE_TOPIC, 0)],
            on_publish=on_publish,
            tls=login.tls,
            reconnect_min_s=0.2,
            reconnect_max_s=1.0,
            connect_timeout_s=login.timeout_s,
            log_connects=False,
        )
        runner = asyncio.create_task(client.run(), name="dynsec-mqtt")
        try:
            try:
                await asyncio.wait_for(client.connected.wait(), login.timeout_s)
            except TimeoutError:
                raise DynsecUnavailable(
                    f"cannot log in to {login.host}:{login.port} as {login.username!r} "
                    f"within {login.timeout_s:.0f} s (see the broker log)"
                ) from None
            try:
                await asyncio.wait_for(
                    client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}).encode()),
                    login.timeout_s,
                )
                await asyncio.wait_for(done.wait(), login.timeout_s)
            except (TimeoutError, MqttError) as exc:
                raise DynsecUnavailable(
                    f"no answer from the dynamic-security plugin: {exc or 'timeout'} "
                    "(is the plugin loaded, and is this login its admin?)"
                ) from exc
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        results = []
        for command in tagged:
            answer = answers[command["correlationData"]]
            error = answer.get("error")
            if error and not any(fragment in str(error) for fragment in tolerate):
                raise DynsecError(str(command["command"]), str(error))
            results.append(answer)
        return results

    async def run(
        self, command: str, *, tolerate: Sequence[str] = (), **args: Any
    ) -> dict[str, Any]:
        """One command; its `data` (if any) is in the returned response."""
        (answer,) = await self.execute([{"command": command, **args}], tolerate=tolerate)
        return answer


class BrokerAccounts:
    """The MQTT identities GridWatch manages: devices, the hub and simulators."""

    def __init__(self, client: DynsecClient, *, topic_prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = normalise_prefix(topic_prefix)

    async def prepare(self) -> None:
        """Deny by default: nothing is readable or writable unless a role grants it."""
        await self.client.run(
            "setDefaultACLAccess",
            acls=[
                {"acltype": "publishClientSend", "allow": False},
                {"acltype": "publishClientReceive", "allow": False},
                {"acltype": "subscribe", "allow": False},
                {"acltype": "unsubscribe", "allow": True},
            ],
        )

    async def ensure_role(self, rolename: str, acls: Sequence[Acl]) -> None:
        """Create the role or make its ACLs exactly these."""
        answer = await self.client.run("getRole", rolename=rolename, tolerate=("not found",))
        if answer.get("error"):
            await self.client.run("createRole", rolename=rolename, acls=[a.as_json() for a in acls])
            return
        current = {
            (a["acltype"], a["topic"]): a
            for a in answer.get("data", {}).get("role", {}).get("acls", [])
        }
        wanted = {(a.acltype, a.topic): a for a in acls}
        commands: list[dict[str, Any]] = [
            {"command": "removeRoleACL", "rolename": rolename, "acltype": t, "topic": topic}
            for (t, topic) in current
            if (t, topic) not in wanted
            or current[(t, topic)].get("allow") != wanted[(t, topic)].allow
        ]
        commands += [
            {"command": "addRoleACL", "rolename": rolename, **a.as_json()}
            for key, a in wanted.items()
            if key not in current or current[key].get("allow") != a.allow
        ]
        await self.client.execute(commands)

    async def _login_for(
        self, username: str, rolename: str, client_id: str | None, text: str
    ) -> Credentials:
        """Create the client with a fresh password, or re-key and re-enable it."""
        password = new_password()
        create: dict[str, Any] = {
            "command": "createClient",
            "username": username,
            "password": password,
            "textname": text,
            "roles": [{"rolename": rolename, "priority": 0}],
        }
        if client_id is not None:
            create["clientid"] = client_id
        (answer,) = await self.client.execute([create], tolerate=ALREADY_EXISTS)
        if answer.get("error"):
            found = await self.client.run("getClient", username=username)
            roles = {
                r.get("rolename") for r in found.get("data", {}).get("client", {}).get("roles", [])
            }
            commands: list[dict[str, Any]] = [
                {"command": "setClientPassword", "username": username, "password": password}
            ]
            if rolename not in roles:
                commands.append(
                    {"command": "addClientRole", "username": username, "rolename": rolename}
                )
            commands.append({"command": "enableClient", "username": username})
            await self.client.execute(commands)
        return Credentials(username, password, client_id, rolename)

    # ---------------------------------------------------------------- devices

    async def register_device(self, device_id: str, topic_root: str) -> Credentials:
        """A device's login (username = client id = device id) and its own-topics role."""
        role = device_role(device_id)
        await self.ensure_role(role, device_acls(topic_root, self.prefix))
        return await self._login_for(device_id, role, device_id, f"device {topic_root}")

    async def retire_device(self, device_id: str) -> None:
        """Disable the login: the broker drops a connected device and refuses it from now."""
        await self.client.run("disableClient", username=device_id, tolerate=("not found",))

    async def rotate_device(self, device_id: str) -> Credentials:
        """A new password; the old one stops working at once (and the device is dropped)."""
        password = new_password()
        await self.client.run("setClientPassword", username=device_id, password=password)
        return Credentials(device_id, password, device_id, device_role(device_id))

    async def device_enabled(self, device_id: str) -> bool | None:
        """Whether the device's login is enabled; None when the broker has no such login."""
        answer = await self.client.run("getClient", username=device_id, tolerate=("not found",))
        if answer.get("error"):
            return None
        return not bool(answer.get("data", {}).get("client", {}).get("disabled", False))

    # ---------------------------------------------------------------- services

    async def register_hub(self, username: str) -> Credentials:
        await self.ensure_role(HUB_ROLE, hub_acls(self.prefix))
        return await self._login_for(username, HUB_ROLE, None, "GridWatch hub")

    async def register_events_reader(self, username: str) -> Credentials:
        """A login that reads every site's security events and nothing else."""
        await self.ensure_role(EVENTS_READER_ROLE, events_reader_acls(self.prefix))
        return await self._login_for(username, EVENTS_READER_ROLE, None, "GridWatch events reader")

    async def register_simulator(self, username: str, sites: Sequence[str]) -> Credentials:
        if not sites:
            raise ValueError("a simulator needs at least one site")
        role = f"gridwatch-sim:{','.join(sorted(sites))}"
        await self.ensure_role(role, simulator_acls(sites, self.prefix))
        return await self._login_for(username, role, None, f"simulator for {', '.join(sites)}")


# ---------------------------------------------------------------------- broker config


def init_config(path: Path, admin_username: str, admin_password: str) -> None:
    """Write the plugin's first config file with its admin login (`mosquitto_ctrl dynsec
    init`, so the password hash is the broker's own format). Refuses to overwrite."""
    if path.exists():
        raise FileExistsError(f"{path} exists: the broker's accounts live there")
    tool = shutil.which("mosquitto_ctrl")
    if tool is None:
        raise FileNotFoundError("mosquitto_ctrl not found (Debian package mosquitto-clients)")
    path.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [tool, "dynsec", "init", str(path), admin_username, admin_password],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise DynsecError("init", (done.stderr or done.stdout).strip())


def broker_conf(config_file: Path) -> str:
    """mosquitto.conf lines that load the plugin and require a login from everyone."""
    return f"plugin {PLUGIN_PATH}\nplugin_opt_config_file {config_file}\nallow_anonymous false\n"
