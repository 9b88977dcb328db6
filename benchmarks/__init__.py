"""Side-by-side speed measurements; run each from the repository root as a module, e.g.
`python -m benchmarks.train_step_speed`, so that `reference` (the bert4keras runner)
imports like any package. Results: docs/benchmarks.md."""
