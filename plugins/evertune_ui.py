"""Entry of the evertune UI plugin for Airflow's plugins folder (``[core] plugins_folder`` = ``plugins/``).

Airflow imports every loose ``.py`` file here and registers the ``AirflowPlugin`` subclasses it finds;
the ``evertune_airflow`` package folder is skipped (``.airflowignore``), so this file is the one place
that names the plugin. See :mod:`evertune_airflow.ui_plugin` and docs/ui.md.
"""

from evertune_airflow.ui_plugin import EvertunePlugin

__all__ = ["EvertunePlugin"]
