"""The e-mail sink against a real SMTP server (aiosmtpd on a free 127.0.0.1 port): the
escalation steps arrive as mail naming the event; a relay that is down, deferring or
refusing loses nothing; STARTTLS and SMTPS with a login."""

from __future__ import annotations

import asyncio
import contextlib
import email
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from devstack.stack import free_port
from events.dispatcher import OutboxDispatcher
from events.email_sink import EmailSink, SmtpConfig, email_message
from events.escalation import EscalationPolicy, Escalator
from events.manager import EventManager
from events.model import Action, Detection, Location, Severity
from events.store import EventStore

T0 = 1_740_000_000_000
MIN = 60_000
HOST = "127.0.0.1"
LI = "li@example.org"
CHIEF = "chief@example.org"
POLICY = EscalationPolicy(
    contacts={"w-li": (f"mailto:{LI}", "tel:+8613800000001")},
    supervisors={"yingyang": (f"mailto:{CHIEF}",)},
)
TITLE = "Confirmed fire: 烟感 B3-2"


class Inbox:
    """An aiosmtpd handler that keeps what it accepts; it can defer or refuse on demand."""

    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, EmailMessage]] = []
        self.refuse: set[str] = set()
        self.defer = False
        self.logins: list[str] = []

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.defer:
            return "451 4.3.0 try again later"
        data = envelope.content
        assert isinstance(data, bytes)
        msg = email.message_from_bytes(data, policy=default_policy)
        assert isinstance(msg, EmailMessage)
        self.messages.append((envelope, msg))
        return "250 OK queued"


@contextlib.contextmanager
def smtp_server(inbox: Inbox, port: int | None = None, **kw: Any) -> Iterator[int]:
    port = port or free_port()
    controller = Controller(inbox, hostname=HOST, port=port, **kw)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def clock_ms() -> int:
    return time.time_ns() // 1_000_000


async def eventually(predicate: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {within_s} s")
        await asyncio.sleep(0.02)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as s:
        s.migrate()
        yield s


def escalated_events(store: EventStore, *keys: str) -> list[str]:
    """Raise one critical fire per key in cell c1, then remind and escalate each."""
    manager = EventManager(store, workers={"c1": "w-li"}, sinks=["email"])
    ids = []
    for key in keys:
        detection = Detection(
            rule_id="fire_confirmed",
            key=key,
            raised=True,
            at_ms=T0,
            site="yingyang",
            cell="c1",
            device=key,
            severity=Severity.CRITICAL,
            title=TITLE,
            message="two smoke detectors in alarm",
            incident="fire",
            devices=(key, f"{key}-b"),
            location=Location(121.4737, 31.2304),
        )
        ids.append(manager.handle(detection, T0)[0].id)
    escalator = Escalator(manager, POLICY, clock_ms=clock_ms)
    escalator.round(T0)
    assert len(escalator.round(T0 + 2 * MIN).sent) == len(keys)
    assert len(escalator.round(T0 + 5 * MIN).sent) == len(keys)
    return ids


def config(port: int, **kw: Any) -> SmtpConfig:
    base = SmtpConfig(
        host=HOST,
        port=port,
        sender="gridwatch@hub.example.org",
        security="none",
        timeout_s=5.0,
        desk_url="https://hub.example.org/",
    )
    return replace(base, **kw)


def dispatcher(store: EventStore, sink: EmailSink) -> OutboxDispatcher:
    return OutboxDispatcher(store, [sink], clock_ms=clock_ms, backoff_s=(0.05, 0.3))


# ---------------------------------------------------------------------- the mail


async def test_reminder_and_escalation_arrive_naming_the_event(store: EventStore) -> None:
    (event_id,) = escalated_events(store, "smoke-b3-2")
    inbox = Inbox()
    with smtp_server(inbox) as port:
        outbox = dispatcher(store, EmailSink(config(port)))
        assert await outbox.drain(10)
    # RAISE and ASSIGN have nothing to mail: passed over, not left in the outbox.
    assert store.outbox_pending() == {}
    assert outbox.stats()["email"].delivered == 4
    assert len(inbox.messages) == 2
    (remind_env, remind), (escalate_env, escalate) = inbox.messages

    assert remind_env.mail_from == "gridwatch@hub.example.org"
    assert remind_env.rcpt_tos == [LI]
    assert remind["To"] == LI
    assert remind["Subject"] == f"[GridWatch] Reminder: CRITICAL at yingyang / cell c1: {TITLE}"
    assert remind["Message-ID"].endswith("@hub.example.org>")
    assert remind["X-GridWatch-Event"] == event_id
    assert remind["X-GridWatch-Action"] == "notify"
    body = remind.get_content()
    for expected in (
        "Reminder: reminder to grid worker w-li: critical event unacknowledged for 2 min.",
        f"Event:      {TITLE}",
        "Severity:   critical",
        "Site:       yingyang",
        "Cell:       c1",
        "Device(s):  smoke-b3-2, smoke-b3-2-b",
        "Location:   31.230400, 121.473700 (lat, lon)",
        "State:      active_unacknowledged",
        "Assignee:   w-li",
        "Message:    two smoke detectors in alarm",
        f"Event id:   {event_id}",
        f"Open:       https://hub.example.org/desk/events/{event_id}",
        "Sent to grid worker w-li (worker:w-li).",
    ):
        assert expected in body, (expected, body)

    assert escalate_env.rcpt_tos == [CHIEF]
    assert escalate["Subject"] == (
        f"[GridWatch] Escalated: CRITICAL at yingyang / cell c1: {TITLE}"
    )
    assert "escalated to the supervisor of yingyang" in escalate.get_content()
    assert remind["Message-ID"] != escalate["Message-ID"]


def test_only_escalation_steps_with_mailto_contacts_make_mail(store: EventStore) -> None:
    escalated_events(store, "d1")
    items = store.outbox_due("email", 2**62)
    assert [i.audit.action for i in items] == [
        Action.RAISE,
        Action.ASSIGN,
        Action.NOTIFY,
        Action.ESCALATE,
    ]
    cfg = config(25)
    made = [email_message(i, cfg) for i in items]
    assert [m is not None for m in made] == [False, False, True, True]
    # The same item renders the same Message-ID on every attempt.
    again = email_message(items[2], cfg)
    assert made[2] is not None and again is not None
    assert made[2]["Message-ID"] == again["Message-ID"]
    # A step whose addressee has no mailto: contact is for the other channels only.
    tel_only = replace(
        items[2], audit=replace(items[2].audit, note="reminder\nto: worker:w-li tel:+861")
    )
    assert email_message(tel_only, cfg) is None


# ---------------------------------------------------------------------- failures


async def test_relay_down_the_outbox_retries_and_nothing_is_lost(store: EventStore) -> None:
    escalated_events(store, "d1", "d2")
    port = free_port()  # nobody listens yet
    outbox = dispatcher(store, EmailSink(config(port)))
    task = asyncio.create_task(outbox.run())
    try:
        await eventually(lambda: outbox.stats()["email"].retries >= 2)
        stats = outbox.stats()["email"]
        assert "Connection refused" in stats.last_error or "ConnectionRefused" in stats.last_error
        # The raises and assignments have no mail and went; the four mails wait.
        assert store.outbox_pending() == {"email": 4}
        assert store.outbox_failed() == []
        inbox = Inbox()
        with smtp_server(inbox, port):
            await eventually(lambda: len(inbox.messages) == 4)
            await eventually(lambda: store.outbox_pending() == {})
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    rcpts = sorted(env.rcpt_tos[0] for env, _ in inbox.messages)
    assert rcpts == [CHIEF, CHIEF, LI, LI]
    assert store.outbox_failed() == []


async def test_a_deferring_relay_is_retried_and_a_refused_mail_is_kept_as_failed(
    store: EventStore,
) -> None:
    escalated_events(store, "d1")
    inbox = Inbox()
    inbox.defer = True  # 451 to DATA
    with smtp_server(inbox) as port:
        outbox = dispatcher(store, EmailSink(config(port)))
        assert not await outbox.drain(0.5)
        assert outbox.stats()["email"].last_error.startswith("message deferred: 451")
        assert store.outbox_pending() == {"email": 2}  # RAISE and ASSIGN went through
        inbox.defer = False
        inbox.refuse = {CHIEF}  # the supervisor's address is refused for good (550)
        assert await outbox.drain(10)
    assert [env.rcpt_tos for env, _ in inbox.messages] == [[LI]]
    (failed,) = store.outbox_failed()
    assert failed.audit.action is Action.ESCALATE
    assert "550" in failed.last_error


# ---------------------------------------------------------------------- TLS and login


def _make_certs(directory: Path) -> tuple[Path, Path, Path]:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ca_key, ca_crt = directory / "ca.key", directory / "ca.crt"
    key, csr, crt = directory / "smtp.key", directory / "smtp.csr", directory / "smtp.crt"
    ext = directory / "san.ext"
    ext.write_text(f"subjectAltName=IP:{HOST}\n")
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        "/CN=gw-test-ca", "-keyout", str(ca_key), "-out", str(ca_crt))  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={HOST}",
        "-keyout", str(key), "-out", str(csr))  # fmt: skip
    run("x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(crt))  # fmt: skip
    return ca_crt, crt, key


class Logins:
    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login == b"gridwatch"
            and data.password == b"s3cret-relay-pass"
        )
        if ok:
            self.inbox.logins.append(mechanism)
        return AuthResult(success=ok, handled=False)  # the server answers 235 or 535


@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_tls_and_login(store: EventStore, tmp_path: Path, security: str) -> None:
    ca, crt, key = _make_certs(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(crt, key)
    escalated_events(store, "d1")
    inbox = Inbox()
    kw: dict[str, Any] = {"authenticator": Logins(inbox)}
    if security == "starttls":
        kw |= {"tls_context": server_tls, "require_starttls": True, "auth_require_tls": True}
    else:  # SMTPS: aiosmtpd cannot tell the session is TLS, so no auth_require_tls
        kw |= {"ssl_context": server_tls, "auth_require_tls": False}
    with smtp_server(inbox, **kw) as port:
        wrong = EmailSink(
            config(port, security=security, ca_file=ca, username="gridwatch", password="nope")
        )
        outbox = dispatcher(store, wrong)
        assert not await outbox.drain(0.5)  # a bad login is our setting: kept, retried
        assert "SMTPAuthenticationError" in outbox.stats()["email"].last_error
        assert inbox.messages == []
        sink = EmailSink(
            config(
                port,
                security=security,
                ca_file=ca,
                username="gridwatch",
                password="s3cret-relay-pass",
            )
        )
        assert await sink.ready()
        assert await dispatcher(store, sink).drain(10)
    assert len(inbox.messages) == 2
    assert inbox.logins and set(inbox.logins) <= {"PLAIN", "LOGIN"}


async def test_probe_and_login_rules(tmp_path: Path) -> None:
    assert not await EmailSink(config(free_port())).ready()
    with pytest.raises(ValueError, match="login needs security"):
        EmailSink(config(25, host="smtp.example.org", username="u", password="p"))
    inbox = Inbox()
    with smtp_server(inbox) as port:
        assert await EmailSink(config(port)).ready()
