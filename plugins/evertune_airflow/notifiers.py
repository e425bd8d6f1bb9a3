"""Notifiers for failures and gate rejections: logged by default, Slack or email when configured.

Configuration (all optional, no secrets in code):

* Airflow connection ``evertune_slack`` (type ``http``): the Slack incoming-webhook URL in ``host``
  (or ``password`` for the secret part). Set e.g. ``AIRFLOW_CONN_EVERTUNE_SLACK='http://hooks.slack.com/services/...'``.
* ``EVERTUNE_ALERT_EMAIL``: comma-separated recipients, sent through the ``smtp_default`` connection.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request

from airflow.sdk import BaseNotifier

log = logging.getLogger(__name__)

SLACK_CONN_ID = "evertune_slack"


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
        """Compose the text from the run context (dag, run, task, exception)."""
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
        return "\n".join(parts)

    def notify(self, context) -> None:
        """Deliver the message: log, then Slack and email when configured."""
        message = self.build_message(context)
        log.warning("%s", message)
        self._send_slack(message)
        self._send_email(message)

    @staticmethod
    def _send_slack(message: str) -> None:
        from airflow.sdk import BaseHook

        try:
            conn = BaseHook.get_connection(SLACK_CONN_ID)
        except Exception:  # noqa: BLE001 - "connection not defined" has no stable exception type across versions
            return
        url = conn.host if "://" in (conn.host or "") else f"https://{conn.host}{conn.password or ''}"
        body = json.dumps({"text": message}).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - operator-configured URL
            response.read()

    @staticmethod
    def _send_email(message: str) -> None:
        recipients = [r.strip() for r in os.environ.get("EVERTUNE_ALERT_EMAIL", "").split(",") if r.strip()]
        if not recipients:
            return
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        SmtpNotifier(to=recipients, subject=message.splitlines()[0], html_content=f"<pre>{message}</pre>").notify({})


def failure_notifier(title: str = "evertune task failed") -> EvertuneNotifier:
    """The DAG-level ``on_failure_callback`` used by every evertune DAG."""
    return EvertuneNotifier(title=title)
