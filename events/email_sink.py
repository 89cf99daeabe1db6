"""E-mail through SMTP: the escalation steps (NOTIFY, ESCALATE) of the outbox as mail.

Every transition reaches every sink; this one sends mail only for escalation steps whose
note names `mailto:` contacts (`events.escalation.parse_note`) and passes over the rest
(delivered, nothing to send). The mail names the event, its site, cell, severity, state
and the step; the desk link needs `desk_url`.

Delivery (stdlib `smtplib` in a worker thread, one connection per batch): connection
refused, timeouts, 4xx replies, a failed login or STARTTLS are `SinkUnavailable` (the
outbox keeps the items and retries: fixing the relay or the settings loses nothing); a
5xx refusal of the message or of all its recipients is `SinkRejected` (kept in the
outbox as failed, with the reply). Recipients refused while others accepted are logged.

At least once, like every sink: a mail the relay accepted just before the hub stopped
is sent again on the next start. Its Message-ID is the same on every attempt
(`<gridwatch.<event id>.<version>.<action>@<sender domain>>`), so mail systems and
readers that dedupe on it show it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Final, Literal

from events.escalation_notice import STEPS, email_addresses, parse_note
from events.model import Action, OutboxItem
from events.render import rfc3339_ms
from events.sinks import SinkRejected, SinkUnavailable

__all__ = ["EMAIL_BACKOFF_MAX_S", "EmailSink", "SmtpConfig", "email_message"]

log = logging.getLogger(__name__)

EMAIL_BACKOFF_MAX_S: Final = 30.0
"""The longest the outbox waits between attempts while the relay is unavailable (the
readiness probe usually resumes delivery sooner)."""
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]+")

Security = Literal["none", "starttls", "tls"]


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """Where and how to hand mail over (built from the `[email]` settings)."""

    host: str
    port: int
    sender: str
    """The From address (and the envelope sender)."""
    security: Security = "starttls"
    """`starttls` (upgrade a plain connection; the usual port 587), `tls` (TLS from the
    start, port 465) or `none` (plain; for a relay on the same host)."""
    username: str | None = None
    password: str | None = None
    timeout_s: float = 10.0
    ca_file: Path | None = None
    """CA bundle for the relay's certificate (default: the system's)."""
    subject_prefix: str = "[GridWatch]"
    desk_url: str | None = None
    """The hub's public base URL, e.g. https://hub.example.org: mail links to the event."""


def _one_line(text: str) -> str:
    return _CONTROL.sub(" ", text).strip()


def _domain(sender: str) -> str:
    return sender.rpartition("@")[2] or "gridwatch"


def email_message(item: OutboxItem, config: SmtpConfig) -> EmailMessage | None:
    """The mail for one outbox item, or None when it has nothing to send (not an
    escalation step, or no `mailto:` contact)."""
    record, event = item.audit, item.event
    if record.action not in STEPS:
        return None
    notice = parse_note(record.note)
    if notice is None:
        return None
    to = email_addresses(notice)
    if not to:
        return None
    step = "Reminder" if record.action is Action.NOTIFY else "Escalated"
    where = event.site + (f" / cell {event.cell}" if event.cell else "")
    title = event.title or event.rule_id
    subject = f"{config.subject_prefix} {step}: {event.severity.value.upper()} at {where}: {title}"
    msg = EmailMessage()
    msg["From"] = config.sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = _one_line(subject)
    msg["Date"] = format_datetime(datetime.fromtimestamp(record.at_ms / 1000, UTC))
    msg["Message-ID"] = (
        f"<gridwatch.{event.id}.{event.version}.{record.action.value}@{_domain(config.sender)}>"
    )
    msg["X-GridWatch-Event"] = event.id
    msg["X-GridWatch-Action"] = record.action.value
    msg["X-GridWatch-Severity"] = event.severity.value
    step_text = record.note.splitlines()[0] if record.note else record.action.value
    devices = ", ".join(dict.fromkeys(d for d in (event.device, *event.devices) if d))
    lines = [
        f"{step}: {step_text}.",
        "",
        f"Event:      {title}",
        f"Severity:   {event.severity.value}",
        f"Site:       {event.site}",
        f"Cell:       {event.cell or '-'}",
        f"Device(s):  {devices or '-'}",
    ]
    if event.location is not None:
        lines.append(f"Location:   {event.location.lat:.6f}, {event.location.lon:.6f} (lat, lon)")
    lines += [
        f"State:      {event.state.value}",
        f"Raised:     {rfc3339_ms(event.raised_ms)}",
        f"Count:      {event.count}",
        f"Assignee:   {event.assignee or '-'}",
        f"Message:    {event.message or '-'}",
        f"Event id:   {event.id}",
    ]
    if config.desk_url:
        lines.append(f"Open:       {config.desk_url.rstrip('/')}/desk/events/{event.id}")
    lines += [
        "",
        f"Sent to {notice.who} ({notice.addressee}).",
        "Acknowledge the event on the desk to stop further escalation.",
        "",
    ]
    msg.set_content("\n".join(lines))
    return msg


class EmailSink:
    """Escalation steps as mail through an SMTP relay (module doc)."""

    max_backoff_s: float = EMAIL_BACKOFF_MAX_S

    def __init__(self, config: SmtpConfig, *, name: str = "email") -> None:
        if config.security == "none" and config.username and not _loopback(config.host):
            raise ValueError("an SMTP login needs security 'starttls' or 'tls' off loopback")
        self.name = name
        self.config = config

    async def ready(self) -> bool:
        """The relay answers (connect, EHLO, NOOP, QUIT); False when it does not."""
        return await asyncio.to_thread(self._probe)

    async def deliver(self, items: Sequence[OutboxItem]) -> None:
        # A cancelled wait (a drain's timeout, a stop) does not stop the thread: a mail
        # already on its way could reach the relay after the caller gave up on it, and be
        # sent again on the next round. So a cancel waits for the send to end first.
        sending = asyncio.ensure_future(asyncio.to_thread(self._deliver, list(items)))
        try:
            await asyncio.shield(sending)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await sending
            raise

    # ------------------------------------------------------------------ in the worker thread

    def _deliver(self, items: list[OutboxItem]) -> None:
        done: list[int] = []
        smtp: smtplib.SMTP | None = None
        try:
            for item in items:
                try:
                    msg = email_message(item, self.config)
                except ValueError as exc:  # a header the email package refuses
                    raise SinkRejected(
                        f"cannot render: {exc}", item_id=item.id, delivered=done
                    ) from exc
                if msg is None:
                    done.append(item.id)
                    continue
                if smtp is None:
                    smtp = self._connect(done)
                self._send(smtp, item, msg, done)
                done.append(item.id)
        finally:
            if smtp is not None:
                _quit(smtp)

    def _connect(self, done: Sequence[int]) -> smtplib.SMTP:
        cfg = self.config
        try:
            if cfg.security == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    cfg.host, cfg.port, timeout=cfg.timeout_s, context=self._tls()
                )
            else:
                smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s)
            try:
                smtp.ehlo()
                if cfg.security == "starttls":
                    smtp.starttls(context=self._tls())
                    smtp.ehlo()
                if cfg.username:
                    smtp.login(cfg.username, cfg.password or "")
            except BaseException:
                _quit(smtp)
                raise
        except (smtplib.SMTPException, OSError) as exc:
            # Down, refused, TLS or login failing: the relay or our settings, never the
            # mail. Keep it and retry (a fixed setting then loses nothing).
            raise SinkUnavailable(
                f"SMTP {cfg.host}:{cfg.port}: {type(exc).__name__}: {exc}", delivered=done
            ) from exc
        return smtp

    def _send(
        self, smtp: smtplib.SMTP, item: OutboxItem, msg: EmailMessage, done: Sequence[int]
    ) -> None:
        try:
            refused = smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            detail = "; ".join(
                f"{to}: {code} {_text(m)}" for to, (code, m) in exc.recipients.items()
            )
            if codes and all(code >= 500 for code in codes):
                raise SinkRejected(
                    f"every recipient refused: {detail}", item_id=item.id, delivered=done
                ) from exc
            raise SinkUnavailable(f"recipients deferred: {detail}", delivered=done) from exc
        except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
            detail = f"{exc.smtp_code} {_text(exc.smtp_error)}"
            if exc.smtp_code >= 500:
                raise SinkRejected(
                    f"message refused: {detail}", item_id=item.id, delivered=done
                ) from exc
            raise SinkUnavailable(f"message deferred: {detail}", delivered=done) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise SinkUnavailable(f"{type(exc).__name__}: {exc}", delivered=done) from exc
        if refused:
            log.warning(
                "email: event %s %s: some recipients refused: %s",
                item.event.id,
                item.audit.action.value,
                "; ".join(f"{to}: {code} {_text(m)}" for to, (code, m) in refused.items()),
            )

    def _probe(self) -> bool:
        cfg = self.config
        try:
            if cfg.security == "tls":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    cfg.host, cfg.port, timeout=cfg.timeout_s, context=self._tls()
                )
            else:
                smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s)
        except (smtplib.SMTPException, OSError):
            return False
        try:
            smtp.ehlo()
            code, _ = smtp.noop()
        except (smtplib.SMTPException, OSError):
            return False
        finally:
            _quit(smtp)
        return bool(200 <= code < 300)

    def _tls(self) -> ssl.SSLContext:
        ca = self.config.ca_file
        return ssl.create_default_context(cafile=str(ca) if ca is not None else None)


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def _text(message: bytes | str) -> str:
    text = message.decode(errors="replace") if isinstance(message, bytes) else message
    return " ".join(text.split())[:200]


def _loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")
