"""Security events: model and lifecycle, store, noise control, sinks."""
