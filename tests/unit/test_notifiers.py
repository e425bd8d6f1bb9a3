"""The evertune notifier: the log by default, Slack and SMTP through Airflow's provider notifiers when configured.

Slack and SMTP are real round trips to servers on 127.0.0.1 started (and stopped) by the tests.
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from evertune_airflow import notifiers
from evertune_airflow.notifiers import EvertuneNotifier, NotificationError, failure_notifier

pytestmark = pytest.mark.timeout(60)

WEBHOOK_PATH = "/services/T000/B000/s3cr3tt0ken"
FROM = "evertune@example.com"


@pytest.fixture(autouse=True)
def no_channels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test with nothing but the log configured."""
    for var in ("AIRFLOW_CONN_EVERTUNE_SLACK", "AIRFLOW_CONN_EVERTUNE_SMTP", "AIRFLOW_CONN_SMTP_DEFAULT",
                notifiers.RECIPIENTS_ENV, notifiers.SLACK_CHANNEL_ENV):
        monkeypatch.delenv(var, raising=False)


def _context(**extra) -> dict:
    ti = SimpleNamespace(task_id="gate", try_number=2, log_url="http://airflow.local/dags/tune_model/runs/r1/tasks/gate")
    return {"dag_run": SimpleNamespace(dag_id="tune_model", run_id="r1"), "ti": ti, **extra}


def _notifier() -> EvertuneNotifier:
    return EvertuneNotifier(title="gate reject: challenger v3 did not take champion",
                            details=["faithfulness 0.61 < 0.70", "refusal_rate 0.20 > 0.10"])


EXPECTED = "\n".join([
    "[evertune] gate reject: challenger v3 did not take champion",
    "dag=tune_model run=r1",
    "task=gate try=2",
    "faithfulness 0.61 < 0.70",
    "refusal_rate 0.20 > 0.10",
    "link=http://airflow.local/dags/tune_model/runs/r1/tasks/gate",
])


# --- local servers -------------------------------------------------------------------------------------------------

class _Recorder(BaseHTTPRequestHandler):
    """Records each POST (path, JSON body) on the server and answers with the server's canned reply."""

    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append((self.path, json.loads(body)))
        status, reply, content_type = self.server.reply
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def http_sink() -> Iterator[ThreadingHTTPServer]:
    """An HTTP server on 127.0.0.1 that records posts; stopped after the test."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.requests = []
    server.reply = (200, b"ok", "text/plain")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


class _SmtpSink(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321 without extensions) to accept mail; each mail lands in ``server.mails``."""

    timeout = 10

    def _reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self._reply("220 sink ready")
        mail: dict = {"rcpt": []}
        while line := self.rfile.readline():
            verb = line.strip().upper()
            if verb.startswith((b"EHLO", b"HELO")):
                self._reply("250 sink")
            elif verb.startswith(b"MAIL FROM:"):
                mail = {"from": line.strip()[10:].decode(), "rcpt": []}
                self._reply("250 OK")
            elif verb.startswith(b"RCPT TO:"):
                mail["rcpt"].append(line.strip()[8:].decode())
                self._reply("250 OK")
            elif verb == b"DATA":
                self._reply("354 end with <CRLF>.<CRLF>")
                data = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data += chunk[1:] if chunk.startswith(b"..") else chunk
                mail["message"] = email.message_from_bytes(data, policy=email.policy.default)
                self.server.mails.append(mail)
                self._reply("250 OK queued")
            elif verb == b"QUIT":
                self._reply("221 bye")
                return
            elif verb in (b"RSET", b"NOOP"):
                self._reply("250 OK")
            else:
                self._reply("502 not implemented")


@pytest.fixture
def smtp_sink() -> Iterator[socketserver.ThreadingTCPServer]:
    """An SMTP sink on 127.0.0.1; stopped after the test."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SmtpSink)
    server.daemon_threads = True
    server.mails = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _webhook_conn(monkeypatch: pytest.MonkeyPatch, server: ThreadingHTTPServer) -> str:
    url = f"http://127.0.0.1:{server.server_address[1]}{WEBHOOK_PATH}"
    monkeypatch.setenv("AIRFLOW_CONN_EVERTUNE_SLACK", json.dumps({"conn_type": "slackwebhook", "password": url}))
    return url


def _smtp_conn(monkeypatch: pytest.MonkeyPatch, server: socketserver.TCPServer, var: str) -> None:
    extra = {"from_email": FROM, "disable_ssl": True, "disable_tls": True, "retry_limit": 0, "timeout": 5}
    conn = {"conn_type": "smtp", "host": "127.0.0.1", "port": server.server_address[1], "extra": extra}
    monkeypatch.setenv(var, json.dumps(conn))


# --- tests ---------------------------------------------------------------------------------------------------------

def test_default_is_the_log_only(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_EVERTUNE_SLACK", "")  # what compose passes when the variable is unset
    assert notifiers.configured_channels("x") == []
    with caplog.at_level(logging.INFO, logger=notifiers.__name__):
        _notifier().notify(_context())
    assert [r.getMessage() for r in caplog.records] == [EXPECTED]


def test_message_names_the_exception_and_keeps_the_call_shapes() -> None:
    message = failure_notifier("tune_model failed").build_message(
        {"dag_run": SimpleNamespace(dag_id="tune_model", run_id="r9"), "exception": ValueError("bad share")})
    assert message == "[evertune] tune_model failed\ndag=tune_model run=r9\nerror=ValueError: bad share"
    assert EvertuneNotifier().build_message({}) == "[evertune] evertune task failed"


def test_slack_webhook_connection_posts_through_the_provider(monkeypatch, http_sink, caplog) -> None:
    _webhook_conn(monkeypatch, http_sink)
    [(channel, notifier, _)] = notifiers.configured_channels("x")
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    assert (channel, type(notifier)) == ("slack", SlackWebhookNotifier)

    with caplog.at_level(logging.DEBUG):
        _notifier().notify(_context())
    [(path, payload)] = http_sink.requests
    assert path == WEBHOOK_PATH
    assert payload["text"] == EXPECTED
    assert "s3cr3tt0ken" not in caplog.text


def test_slack_api_connection_posts_to_the_configured_channel(monkeypatch, http_sink) -> None:
    http_sink.reply = (200, b'{"ok": true, "channel": "C1", "ts": "1.0"}', "application/json")
    base_url = f"http://127.0.0.1:{http_sink.server_address[1]}/api/"
    conn = {"conn_type": "slack", "password": "xoxb-s3cr3t", "extra": {"base_url": base_url}}
    monkeypatch.setenv("AIRFLOW_CONN_EVERTUNE_SLACK", json.dumps(conn))
    monkeypatch.setenv(notifiers.SLACK_CHANNEL_ENV, "#ml-alerts")

    _notifier().notify(_context())
    [(path, payload)] = http_sink.requests
    assert path == "/api/chat.postMessage"
    assert (payload["channel"], payload["text"]) == ("#ml-alerts", EXPECTED)


def test_smtp_connection_and_recipients_send_the_mail(monkeypatch, smtp_sink) -> None:
    _smtp_conn(monkeypatch, smtp_sink, "AIRFLOW_CONN_EVERTUNE_SMTP")
    monkeypatch.setenv(notifiers.RECIPIENTS_ENV, "ops@example.com, ml@example.com,")
    [(channel, notifier, _)] = notifiers.configured_channels("x")
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    assert (channel, type(notifier), notifier.smtp_conn_id) == ("email", SmtpNotifier, "evertune_smtp")

    _notifier().notify(_context(exception=ValueError("a < b")))
    [mail] = smtp_sink.mails
    assert sorted(mail["rcpt"]) == ["<ml@example.com>", "<ops@example.com>"]
    message = mail["message"]
    assert message["Subject"] == "[evertune] gate reject: challenger v3 did not take champion"
    assert message["From"] == FROM
    body = message.get_body(("html",)).get_content()
    assert "error=ValueError: a &lt; b" in body and "refusal_rate 0.20 &gt; 0.10" in body


def test_smtp_default_is_the_fallback_connection(monkeypatch, smtp_sink) -> None:
    _smtp_conn(monkeypatch, smtp_sink, "AIRFLOW_CONN_SMTP_DEFAULT")
    monkeypatch.setenv(notifiers.RECIPIENTS_ENV, "ops@example.com")
    [(_, notifier, _)] = notifiers.configured_channels("x")
    assert notifier.smtp_conn_id == "smtp_default"


def test_recipients_without_an_smtp_connection_only_log(monkeypatch, caplog) -> None:
    monkeypatch.setenv(notifiers.RECIPIENTS_ENV, "ops@example.com")
    with caplog.at_level(logging.WARNING, logger=notifiers.__name__):
        assert notifiers.configured_channels("x") == []
    assert "not sent" in caplog.text


def test_an_smtp_connection_without_recipients_sends_nothing(monkeypatch, smtp_sink) -> None:
    _smtp_conn(monkeypatch, smtp_sink, "AIRFLOW_CONN_EVERTUNE_SMTP")
    _notifier().notify(_context())
    assert smtp_sink.mails == []


def test_a_failing_channel_does_not_stop_the_others_and_leaks_no_secret(monkeypatch, http_sink, smtp_sink,
                                                                        caplog) -> None:
    http_sink.reply = (500, b"invalid_token", "text/plain")
    url = _webhook_conn(monkeypatch, http_sink)
    _smtp_conn(monkeypatch, smtp_sink, "AIRFLOW_CONN_EVERTUNE_SMTP")
    monkeypatch.setenv(notifiers.RECIPIENTS_ENV, "ops@example.com")

    with caplog.at_level(logging.DEBUG), pytest.raises(NotificationError, match="slack") as raised:
        _notifier().notify(_context())
    assert http_sink.requests and len(smtp_sink.mails) == 1
    assert "email" not in str(raised.value)
    for text in (str(raised.value), caplog.text):
        assert url not in text and "s3cr3tt0ken" not in text


def test_connection_secrets_and_redact() -> None:
    webhook = SimpleNamespace(password=" https://hooks.slack.com/services/T/B/X ")
    assert notifiers.connection_secrets(webhook) == ["https://hooks.slack.com/services/T/B/X", "services/T/B/X"]
    assert notifiers.connection_secrets(SimpleNamespace(password=None)) == []
    text = "POST https://hooks.slack.com/services/T/B/X failed; token services/T/B/X"
    assert notifiers.redact(text, notifiers.connection_secrets(webhook)) == "POST *** failed; token ***"
    assert notifiers.redact("nothing", ["", "x"]) == "nothing"
