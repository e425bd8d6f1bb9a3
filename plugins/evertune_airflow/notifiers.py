"""Notifiers for failures and gate rejections: logged always, Slack or email through Airflow's providers when configured.

The message always goes to the log (the task log for task callbacks and the ``notify`` task). It also goes to:

* Slack, when the Airflow connection ``evertune_slack`` exists (``AIRFLOW_CONN_EVERTUNE_SLACK``). Its type picks the
  provider notifier: ``slackwebhook`` (an incoming webhook, the webhook URL or token in ``password``) is sent with
  ``SlackWebhookNotifier``; ``slack`` (a bot token in ``password``) with ``SlackNotifier`` to the channel named by
  ``EVERTUNE_SLACK_CHANNEL`` (default ``#general``).
* email, when ``EVERTUNE_ALERT_EMAIL`` names recipients (comma-separated), with ``SmtpNotifier`` through the connection
  ``evertune_smtp`` (``AIRFLOW_CONN_EVERTUNE_SMTP``), or ``smtp_default`` when that one is not defined. The sender is
  the connection's ``from_email`` extra.

Every configured channel is tried; if one fails, the others still get the message and a :class:`NotificationError`
naming the failed channels is raised at the end. Connection secrets are replaced by ``***`` in what is logged or raised.
Connections are looked up when a message is sent, never when a DAG file is parsed. See ``docs/notifications.md``.
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Iterable
from urllib.parse import urlsplit

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)

SLACK_CONN_ID = "evertune_slack"
SMTP_CONN_ID = "evertune_smtp"
FALLBACK_SMTP_CONN_ID = "smtp_default"
RECIPIENTS_ENV = "EVERTUNE_ALERT_EMAIL"
SLACK_CHANNEL_ENV = "EVERTUNE_SLACK_CHANNEL"
DEFAULT_SLACK_CHANNEL = "#general"
SEND_TIMEOUT_S = 10


class NotificationError(RuntimeError):
    """At least one configured channel could not deliver the message (the message names them, without secrets)."""


class EvertuneNotifier(BaseNotifier):
    """Send one message to every configured channel; always log it.

    Args:
        title: Short headline, e.g. ``"Gate rejected challenger"``.
        details: Optional lines appended to the message (reasons, links).
    """

    template_fields = ("title", "details")

    def __init__(self, title: str = "evertune task failed", details: list[str] | None = None) -> None:
        super().__init__()
        self.title = title
        self.details = details or []

    def build_message(self, context) -> str:
        """Compose the text from the run context (dag, run, task, exception, link to the task's log)."""
        ti = context.get("ti") or context.get("task_instance")
        run = context.get("dag_run")
        parts = [f"[evertune] {self.title}"]
        if run is not None:
            parts.append(f"dag={run.dag_id} run={run.run_id}")
        if ti is not None:
            parts.append(f"task={ti.task_id} try={getattr(ti, 'try_number', '?')}")
        exception = context.get("exception")
        if exception is not None:
            parts.append(f"error={type(exception).__name__}: {exception}")
        parts.extend(str(line) for line in self.details)
        link = _run_link(ti)
        if link:
            parts.append(f"link={link}")
        return "\n".join(parts)

    def notify(self, context) -> None:
        """Deliver the message: log it, then send it through every configured provider notifier.

        Raises:
            NotificationError: one or more configured channels failed (after all were tried).
        """
        message = self.build_message(context)
        log.warning("%s", message)
        failed = []
        for channel, notifier, secrets in configured_channels(message):
            try:
                notifier.notify(context)
            except Exception as exc:  # noqa: BLE001 - one broken channel must not silence the others
                reason = redact(f"{type(exc).__name__}: {exc}", secrets)
                log.error("evertune notification through %s failed: %s", channel, reason)
                failed.append(f"{channel} ({reason})")
            else:
                log.info("evertune notification sent through %s", channel)
        if failed:
            raise NotificationError("notification failed through " + "; ".join(failed))


def failure_notifier(title: str = "evertune task failed") -> EvertuneNotifier:
    """The DAG-level ``on_failure_callback`` used by every evertune DAG."""
    return EvertuneNotifier(title=title)


def configured_channels(message: str) -> list[tuple[str, BaseNotifier, list[str]]]:
    """The provider notifiers for the channels configured now, each with its name and the secrets to redact.

    Args:
        message: The composed text; its first line is the mail subject.

    Returns:
        ``(channel, notifier, secrets)`` per configured channel, Slack first; empty when only the log is configured.
    """
    channels = []
    slack = slack_channel(message)
    if slack is not None:
        channels.append(slack)
    email = email_channel(message, alert_recipients())
    if email is not None:
        channels.append(email)
    return channels


def slack_channel(message: str) -> tuple[str, BaseNotifier, list[str]] | None:
    """The Slack provider notifier for connection ``evertune_slack``, or ``None`` when it is not defined.

    Args:
        message: The text to post.

    Returns:
        ``("slack", notifier, secrets)``: ``SlackNotifier`` for a ``slack`` (API token) connection, otherwise
        ``SlackWebhookNotifier``.
    """
    conn = find_connection(SLACK_CONN_ID)
    if conn is None:
        return None
    secrets = connection_secrets(conn)
    if conn.conn_type == "slack":
        from airflow.providers.slack.notifications.slack import SlackNotifier

        channel = os.environ.get(SLACK_CHANNEL_ENV, "").strip() or DEFAULT_SLACK_CHANNEL
        notifier = SlackNotifier(slack_conn_id=SLACK_CONN_ID, text=message, channel=channel,
                                 username="evertune", timeout=SEND_TIMEOUT_S)
        return "slack", notifier, secrets
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    notifier = SlackWebhookNotifier(slack_webhook_conn_id=SLACK_CONN_ID, text=message, timeout=SEND_TIMEOUT_S)
    return "slack", notifier, secrets


def email_channel(message: str, recipients: list[str]) -> tuple[str, BaseNotifier, list[str]] | None:
    """The ``SmtpNotifier`` for the recipients, or ``None`` when there are none or no SMTP connection is defined.

    Args:
        message: The text; its first line becomes the subject, the whole of it a ``<pre>`` HTML body.
        recipients: Addresses to send to (from ``EVERTUNE_ALERT_EMAIL``).

    Returns:
        ``("email", notifier, secrets)`` through ``evertune_smtp``, else ``smtp_default``.
    """
    if not recipients:
        return None
    for conn_id in (SMTP_CONN_ID, FALLBACK_SMTP_CONN_ID):
        conn = find_connection(conn_id)
        if conn is not None:
            break
    else:
        log.warning("%s is set but neither %s nor %s is defined; the alert mail is not sent",
                    RECIPIENTS_ENV, SMTP_CONN_ID, FALLBACK_SMTP_CONN_ID)
        return None
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    notifier = SmtpNotifier(to=recipients, smtp_conn_id=conn_id, subject=message.splitlines()[0],
                            html_content=f"<pre>{html.escape(message)}</pre>")
    return "email", notifier, connection_secrets(conn)


def alert_recipients() -> list[str]:
    """The addresses in ``EVERTUNE_ALERT_EMAIL`` (comma-separated, blanks dropped)."""
    return [r.strip() for r in os.environ.get(RECIPIENTS_ENV, "").split(",") if r.strip()]


def find_connection(conn_id: str):
    """The Airflow connection ``conn_id`` (env var, secrets backend or metadata DB), or ``None`` if it is not defined."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def connection_secrets(conn) -> list[str]:
    """The parts of a connection that must not be logged: its password and, for a webhook URL, the URL's path."""
    password = (conn.password or "").strip()
    if not password:
        return []
    secrets = [password]
    if "://" in password:
        path = urlsplit(password).path.strip("/")
        if path:
            secrets.append(path)
    return secrets


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret (longest first) replaced by ``***``."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _run_link(ti) -> str | None:
    """The UI link of the task in its run (``ti.log_url``, built from ``[api] base_url``), if the context has one."""
    if ti is None:
        return None
    try:
        return getattr(ti, "log_url", None) or None
    except Exception:  # noqa: BLE001 - a link is a nicety; a half-built task instance must not stop the alert
        return None
