"""Deployment secrets are registered with Airflow's real secrets masker and disappear from log lines."""

from __future__ import annotations

from evertune_airflow.masking import mask_deployment_secrets, secret_values

ENV = {
    "AWS_SECRET_ACCESS_KEY": "s3cr3t-aws-key-value",
    "EVERTUNE_ADMIN_PASSWORD": "hunter22-admin",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://airflow:db-pass%2Fword@db:5432/airflow",
    "MLFLOW_TRACKING_URI": "https://ml:tracking-pass@mlflow.example.com",
    "AIRFLOW_CONN_EVERTUNE_SLACK": "slackwebhook://:webhook-token-123@hooks.slack.com",
    "EVERTUNE_TASK_TOKEN_TTL": "1440000",
    "EVERTUNE_LANCEDB_URI": "s3://bucket/lancedb",
    "PATH": "/usr/bin",
}


def test_secret_values_finds_named_secrets_and_url_passwords() -> None:
    found = secret_values(ENV)
    assert {"s3cr3t-aws-key-value", "hunter22-admin", "db-pass%2Fword", "db-pass/word", "tracking-pass",
            "webhook-token-123"} <= found
    # Lifetimes, plain URLs and ordinary variables are not secrets.
    assert not found & {"1440000", "s3://bucket/lancedb", "/usr/bin"}


def test_registered_secrets_are_redacted_by_airflow() -> None:
    from airflow.sdk._shared.secrets_masker import redact

    assert mask_deployment_secrets(ENV) >= 6
    line = "connecting with db-pass/word and s3cr3t-aws-key-value to https://ml:tracking-pass@mlflow"
    redacted = redact(line)
    for secret in ("db-pass/word", "s3cr3t-aws-key-value", "tracking-pass"):
        assert secret not in redacted, redacted
    assert "***" in redacted
    assert redact("PATH=/usr/bin, TTL 1440000") == "PATH=/usr/bin, TTL 1440000"
