"""The answer service: the ``champion`` model with the ``production`` knowledge base, over HTTP (docs/serving.md).

* :mod:`evertune.serving.follower`: which champion and KB version are served; background polling, swap on change;
* :mod:`evertune.serving.answers`: request checks, retrieval at the served KB version, citations, answer ids;
* :mod:`evertune.serving.app`: MLflow's scoring server app plus ``/ask`` and ``/info``; one-line errors;
* :mod:`evertune.serving.server`: uvicorn in-process (``evertune serve``, the stack's ``serve`` component);
* :mod:`evertune.serving.cli`: the ``evertune serve`` command.
"""
