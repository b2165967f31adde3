"""Tests of the admin panel's data layer: history, collector, Prometheus, logs and diagnostics."""
