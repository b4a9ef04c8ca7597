"""The controller's HTTP API, metrics and dashboard."""
