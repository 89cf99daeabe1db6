"""Anomaly detection: learn each site's normal from history, flag what rules cannot name."""
