"""OpenTelemetry SDK wiring: providers, the instrument catalog, in-process histograms, the metric reader
(``/metrics`` and OTLP pushes from one aggregation), cardinality guards, drift scores, and the logs
(the event log on stdout, the service's own diagnostics on stderr)."""
