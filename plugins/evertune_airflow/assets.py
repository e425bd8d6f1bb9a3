"""The one registry of Airflow Assets that connect evertune's DAGs.

URIs are logical names, not locations: where the data lives is a deployment setting.
"""

from __future__ import annotations

from airflow.sdk import Asset

#: Validated documents and QA pairs of one data interval, versioned with DVC.
#: Extra: ``interval``, ``data_version``, ``n_documents``, ``n_qa``, ``n_quarantined``.
VALIDATED_DATA = Asset(name="validated_data", uri="evertune://data/validated")

#: The published knowledge-base index (the LanceDB ``production`` tag moved).
#: Extra: ``table``, ``table_version``, ``data_version``, ``counts``.
KB_INDEX = Asset(name="kb_index", uri="evertune://kb/production")

#: The model version holding the ``champion`` alias in the MLflow registry.
#: Extra: ``model_name``, ``version``, ``previous_version``.
CHAMPION_MODEL = Asset(name="champion_model", uri="evertune://models/champion")
