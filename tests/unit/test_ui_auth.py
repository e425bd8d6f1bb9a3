"""The run pages enforce Airflow's own auth: tokens minted with Airflow's JWTGenerator, validated by the
configured (simple) auth manager. Only a valid, unexpired token signed with the configured secret, of a
user allowed to read the DAG, gets the page; every other case is refused (401/403)."""

from __future__ import annotations

import html

import pytest

pytest.importorskip("airflow")

from airflow.api_fastapi.auth.tokens import JWTGenerator  # noqa: E402 - after the importorskip
from fastapi.testclient import TestClient  # noqa: E402 - after the importorskip

from evertune_airflow import run_pages  # noqa: E402 - after the importorskip
from evertune_airflow.run_data import RunRecord  # noqa: E402 - after the importorskip

SECRET = "evertune-test-secret-" + "x" * 48
FOREIGN = "someone-else-secret-" + "y" * 48
AUDIENCE = "apache-airflow"
RUN = RunRecord(dag_id="tune_model", run_id="manual__1", state="success", task_states={"gate": "success"},
                results={"gate": {"passed": True, "action": "promote", "reasons": ["f1 up by 0.1"], "checks": []}})


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch):
    """The run-page app with the simple auth manager on SECRET and one known run (no metadata DB)."""
    from airflow.api_fastapi import app as airflow_app
    from airflow.models.revoked_token import RevokedToken

    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", SECRET)
    monkeypatch.setenv("AIRFLOW__CORE__AUTH_MANAGER",
                       "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager")
    monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "False")
    monkeypatch.setattr(airflow_app._AuthManagerState, "instance", None)
    airflow_app.create_auth_manager()
    # Revocation lives in the metadata DB; these tests have none, and no token is revoked.
    monkeypatch.setattr(RevokedToken, "is_revoked", classmethod(lambda cls, jti, **kw: False))
    monkeypatch.setattr(run_pages, "load_run", lambda dag_id, run_id: RUN if (dag_id, run_id) == (
        RUN.dag_id, RUN.run_id) else None)
    with TestClient(run_pages.create_app()) as test_client:
        yield test_client


def mint(secret: str = SECRET, valid_for: float = 300, role: str | None = "admin") -> str:
    """A token as Airflow's simple auth manager issues it (sub/role claims), signed with ``secret``."""
    generator = JWTGenerator(secret_key=secret, valid_for=valid_for, audience=AUDIENCE)
    return generator.generate(extras={"sub": "admin", "role": role, "teams": None})


PAGE = "/runs/tune_model/manual__1"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_valid_token_gets_the_page(client: TestClient) -> None:
    answer = client.get(PAGE, headers=bearer(mint()))
    assert answer.status_code == 200
    assert "f1 up by 0.1" in answer.text and "promote" in answer.text


def test_the_ui_cookie_is_accepted(client: TestClient) -> None:
    client.cookies.set("_token", mint())
    assert client.get(PAGE).status_code == 200


def test_missing_token_is_refused(client: TestClient) -> None:
    answer = client.get(PAGE)
    assert answer.status_code == 401
    assert "Not authenticated" in answer.text
    assert "f1 up" not in answer.text


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c", "Bearer", ""])
def test_malformed_token_is_refused(client: TestClient, token: str) -> None:
    answer = client.get(PAGE, headers=bearer(token))
    assert answer.status_code in (401, 403)
    assert "f1 up" not in answer.text


def test_expired_token_is_refused(client: TestClient) -> None:
    answer = client.get(PAGE, headers=bearer(mint(valid_for=-3600)))
    assert answer.status_code == 401
    assert "f1 up" not in answer.text


def test_foreign_signed_token_is_refused(client: TestClient) -> None:
    answer = client.get(PAGE, headers=bearer(mint(secret=FOREIGN)))
    assert answer.status_code == 403
    assert "f1 up" not in answer.text


def test_foreign_token_in_the_cookie_is_refused(client: TestClient) -> None:
    client.cookies.set("_token", mint(secret=FOREIGN))
    assert client.get(PAGE).status_code == 403


def test_user_without_a_role_may_not_read_the_dag(client: TestClient) -> None:
    answer = client.get(PAGE, headers=bearer(mint(role=None)))
    assert answer.status_code == 403
    assert "f1 up" not in answer.text


def test_unknown_run_is_a_clear_404_after_auth(client: TestClient) -> None:
    answer = client.get("/runs/tune_model/nope", headers=bearer(mint()))
    assert answer.status_code == 404
    assert "No run 'nope' of DAG 'tune_model'" in html.unescape(answer.text)
    assert "Traceback" not in answer.text
    assert client.get("/runs/tune_model/nope").status_code == 401


def test_data_docs_are_served_from_the_reported_site_only(client: TestClient, tmp_path, monkeypatch) -> None:
    site = tmp_path / "site"
    (site / "validations").mkdir(parents=True)
    (site / "validations" / "kb-2026-11-02.html").write_text("<p>expectations</p>")
    (tmp_path / "secret.txt").write_text("outside the site")
    record = RunRecord("refresh_knowledge_base", "r1", "success", results={
        "validate_documents": {"interval": "2026-11-02", "data_docs": (site / "index.html").as_uri()}})
    monkeypatch.setattr(run_pages, "load_run", lambda dag_id, run_id: record if run_id == "r1" else None)
    base = "/data-docs/refresh_knowledge_base/r1/"
    assert client.get(base + "validations/kb-2026-11-02.html").status_code == 401
    answer = client.get(base + "validations/kb-2026-11-02.html", headers=bearer(mint()))
    assert answer.status_code == 200 and "expectations" in answer.text
    for escape in ("../secret.txt", "%2E%2E/secret.txt", "validations/../../secret.txt"):
        refused = client.get(base + escape, headers=bearer(mint()))
        assert refused.status_code == 404, escape
        assert "outside the site" not in refused.text
