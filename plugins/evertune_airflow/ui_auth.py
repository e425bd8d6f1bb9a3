"""Airflow's own authentication and authorization for the evertune pages mounted in the api-server.

A FastAPI app mounted through ``AirflowPlugin.fastapi_apps`` gets no authentication from Airflow. The
pages therefore read the same credentials the public API accepts — ``Authorization: Bearer <jwt>`` first,
then the ``_token`` cookie that the Airflow UI sets after login — and validate them with Airflow's own
machinery (:func:`airflow.api_fastapi.core_api.security.resolve_user_from_token`, i.e. the configured auth
manager's ``get_user_from_token``: signature, expiry, audience, revocation). The user must then be allowed
to read the DAG's runs (``is_authorized_dag`` with ``GET`` on ``DagAccessEntity.RUN``).

Refusals: no token 401, an expired token 401, a malformed or foreign-signed token 403, a valid user
without access to the DAG 403. Only imported inside the api-server (or tests): Airflow imports stay lazy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
    from fastapi import Request


def request_token(request: Request) -> str | None:
    """The JWT a request presents: a Bearer ``Authorization`` header wins over the UI's ``_token`` cookie.

    Returns:
        The raw token, or ``None`` when the request carries neither (an empty header counts as none).
    """
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.cookies.get(COOKIE_NAME_JWT_TOKEN) or None


async def authenticated_user(request: Request) -> BaseUser:
    """The Airflow user behind the request's token, validated by the configured auth manager.

    Raises:
        fastapi.HTTPException: 401 without a token or with an expired one, 403 for an invalid token.
    """
    from airflow.api_fastapi.core_api.security import resolve_user_from_token

    return await resolve_user_from_token(request_token(request))


def require_dag_run_access(user: BaseUser, dag_id: str) -> None:
    """Refuse (403) a user the auth manager does not allow to read the runs of ``dag_id``.

    Raises:
        fastapi.HTTPException: 403 when ``is_authorized_dag(GET, RUN)`` says no.
    """
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from fastapi import HTTPException, status

    allowed = get_auth_manager().is_authorized_dag(
        method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
    )
    if not allowed:
        raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail=f"Forbidden: no read access to {dag_id} runs")


async def authorize_run_page(request: Request, dag_id: str) -> BaseUser:
    """Authenticate the request and check that its user may read ``dag_id``'s runs.

    Raises:
        fastapi.HTTPException: 401 or 403 as described in the module docstring.
    """
    user = await authenticated_user(request)
    require_dag_run_access(user, dag_id)
    return user
