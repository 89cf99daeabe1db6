"""The device vocabulary: one plugin module per sensor kind, listed by hand in `registry`."""
