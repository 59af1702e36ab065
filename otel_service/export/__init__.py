"""The export side: spool -> telemetry -> OTLP -> collector.

``worker`` is the loop, ``progress`` the cursor positions and their rules, ``recorder`` turns events
into metrics, spans and log records, ``otlp`` encodes them, ``delivery`` sends them (retries,
accounting), ``sender`` speaks OTLP over gRPC or HTTP. Never imports aiohttp.
"""
