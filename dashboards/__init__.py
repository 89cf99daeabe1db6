"""Grafana dashboards as code: builders, provisioning files and the HTTP API push."""
