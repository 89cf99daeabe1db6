"""Ingest: MQTT consumer, decoding, durable spool, InfluxDB writers, dead letters, metrics."""
