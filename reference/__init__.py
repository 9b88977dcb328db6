"""The reference implementations simbert is compared against, run in a subprocess:
bert4keras 0.11.5 (`reference.invoke.run_bert4keras`). Tests and benchmarks import it."""
