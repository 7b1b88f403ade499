"""A side-by-side benchmark of `trackio://` and MLflow's own tracking stores.

Run ``python -m benchmarks`` from the repository root (``--quick`` for a smoke
test); see ``docs/performance.md`` for what each workload measures.
"""
