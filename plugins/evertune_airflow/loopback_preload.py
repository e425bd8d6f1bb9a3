"""Imported by the scheduler's forkserver (first in its preload list): Airflow's log server binds 127.0.0.1 there too.

Under ``[scheduler] mp_start_method = forkserver`` the scheduler's ``multiprocessing`` children, the log server
included, are forked from the forkserver, not from the scheduler process that
:mod:`evertune_airflow.airflow_loopback` patched. Importing this module applies the same ``uvicorn.run`` wrapper in
the forkserver, so they inherit it. ``tests/integration/test_stack.py`` checks every listening address.
"""

from __future__ import annotations

from evertune_airflow.airflow_loopback import bind_log_server_to_loopback

bind_log_server_to_loopback()
