"""Keep deployment secrets out of task logs.

Airflow masks Connection passwords and Variables with sensitive names by itself. evertune's tasks also see
secrets through the environment (object-storage keys, an MLflow server's password, database URLs with a
password in them); :func:`mask_deployment_secrets` registers those values with Airflow's secrets masker, so
any log line that contains one shows ``***`` instead. Task return values (XCom) are summaries built by
``include/evertune`` and never carry settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

#: Parts of environment variable names whose values are secrets (Airflow's own list plus cloud SDK names).
SENSITIVE_NAME_PARTS = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "PRIVATE_KEY", "ACCESS_KEY", "API_KEY",
                        "FERNET_KEY", "CREDENTIAL")
#: Variables that may hold a URL with a password in it (``scheme://user:password@host``).
URL_VARIABLES = ("MLFLOW_TRACKING_URI", "EVERTUNE_DVC_REMOTE", "EVERTUNE_LANCEDB_URI", "EVERTUNE_LANDING_URI",
                 "EVERTUNE_MLFLOW_ARTIFACT_ROOT", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
                 "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND")
#: Values too short or too common to mask without hiding ordinary words in every log line.
_MIN_LENGTH = 6


def secret_values(environ: Mapping[str, str] | None = None) -> set[str]:
    """The secret values found in an environment.

    Args:
        environ: Variables to inspect (default: ``os.environ``).

    Returns:
        Values of sensitively named variables, and passwords embedded in URL variables.
    """
    environ = os.environ if environ is None else environ
    found: set[str] = set()
    for name, value in environ.items():
        upper = name.upper()
        # Digits are lifetimes and counts (EVERTUNE_TASK_TOKEN_TTL), not secrets; masking them would hide numbers.
        if any(part in upper for part in SENSITIVE_NAME_PARTS) and len(value) >= _MIN_LENGTH and not value.isdigit():
            found.add(value)
        if upper in URL_VARIABLES or upper.startswith("AIRFLOW_CONN_"):
            password = _url_password(value)
            if password and len(password) >= _MIN_LENGTH:
                found.update({password, unquote(password)})
    return found


def _url_password(value: str) -> str | None:
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    if "@" not in parts.netloc or ":" not in parts.netloc.split("@", 1)[0]:
        return None
    return parts.netloc.split("@", 1)[0].split(":", 1)[1]


def mask_deployment_secrets(environ: Mapping[str, str] | None = None) -> int:
    """Register every secret of the environment with Airflow's secrets masker.

    Returns:
        How many values were registered.
    """
    from airflow.sdk.log import mask_secret

    values = secret_values(environ)
    for value in values:
        mask_secret(value)
    return len(values)
