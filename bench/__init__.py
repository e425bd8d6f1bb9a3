"""evertune benchmarks: throughput and latency of the knowledge-base refresh, retrieval and training.

Benchmarks are not tests. Each one measures the thing under test and its baseline in the same process
run (interleaved, repeated), prints the raw numbers and their ratio, and writes a JSON record under
``bench/results/`` (git-ignored). Results worth keeping go into ``docs/benchmarks.md``.

Run ``python -m bench [kb_throughput|kb_incremental|kb_query|train] [--quick]`` from the repository root.
"""
