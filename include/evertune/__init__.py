"""evertune: continuous tuning for LLMs and their knowledge bases.

The domain package. It never imports Airflow; DAGs wrap its functions as tasks.
"""

__version__ = "0.1.0"
