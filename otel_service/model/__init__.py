"""The pure core: what apps send (events), how bodies become events (strict JSON, validation) and the
errors that name what is wrong, trace context and the correlation rule, prices and providers.

Standard library and msgspec only: no HTTP, no OpenTelemetry (a test holds it to that).
"""
