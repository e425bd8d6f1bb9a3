"""Airflow glue for evertune: the asset registry, defaults, pools and queues, error mapping, notifiers.

Everything here is cheap to import: DAG files import it at parse time.
"""
