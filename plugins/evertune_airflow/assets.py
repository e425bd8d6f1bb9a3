"""The one registry of Airflow Assets that connect evertune's DAGs.

URIs are logical names, not locations: where the data lives is a deployment setting.
"""

from __future__ import annotations

from airflow.sdk import Asset

#: Validated documents and QA pairs of one data interval, versioned with DVC.
#: Extra (written by ``refresh_knowledge_base.version_snapshot``): ``interval``; the fields of
#: :meth:`evertune.data.versioning.DataVersion.to_dict` (``key``, ``path``, ``md5``, ``git_rev``, ``tag``,
#: ``nfiles``, ``size``, ``created``, ``data_version``); and ``counts``, the validation counts
#: (``records_read``, ``documents_valid``, ``qa_valid``, ``quarantined``, ...).
VALIDATED_DATA = Asset(name="validated_data", uri="evertune://data/validated")

#: The published knowledge-base index (the LanceDB ``production`` tag moved).
#: Extra: ``table``, ``table_version``, ``previous_version``, ``changed``, ``data_version``, ``metrics``,
#: ``counts``.
KB_INDEX = Asset(name="kb_index", uri="evertune://kb/production")

#: The model version holding the ``champion`` alias in the MLflow registry.
#: Extra: ``model_name``, ``version``, ``promoted``, ``previous_version``.
CHAMPION_MODEL = Asset(name="champion_model", uri="evertune://models/champion")
