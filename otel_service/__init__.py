"""otel-service."""
