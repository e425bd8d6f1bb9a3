"""The evertune Airflow plugin: a run page per DAG run, shown as an "Evertune" tab on the DAG-run page.

``fastapi_apps`` mounts :func:`evertune_airflow.run_pages.create_app` under ``/evertune`` in the
api-server; ``external_views`` adds the tab (``destination="dag_run"``, with ``url_route`` so the React
UI shows the page in an iframe at ``/dags/<dag>/runs/<run>/plugin/evertune``). The page enforces Airflow's own
auth itself (:mod:`evertune_airflow.ui_auth`).

Registered through ``plugins/evertune_ui.py`` (the plugins folder imports loose files; the package
folder itself is in ``.airflowignore``). Restart the api-server after changing the plugin.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from evertune_airflow.run_pages import RUN_PAGE_HREF, URL_PREFIX, create_app


class EvertunePlugin(AirflowPlugin):
    """Mounts the run pages and adds the DAG-run tab."""

    name = "evertune"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "evertune run pages"}]
    external_views = [
        {
            "name": "Evertune",
            "href": RUN_PAGE_HREF,
            "destination": "dag_run",
            "url_route": "evertune",
            "category": "evertune",
        }
    ]
