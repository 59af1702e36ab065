"""End-to-end suite: the sidecar and its real pipeline (collector, Prometheus, Loki, Tempo, Alertmanager)."""
