"""Rules: YAML rule files, condition kinds, and the pure evaluation engine."""
