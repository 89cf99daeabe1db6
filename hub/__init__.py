"""Hub: composition root (settings, CLI, runtime wiring, local stack, benchmarks)."""
