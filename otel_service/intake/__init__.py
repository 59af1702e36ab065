"""The HTTP edge: a request becomes validated events in the spool (``accept``: where 202 is earned).

``server`` routes, guards and is the one error boundary; ``body`` reads bodies; ``handlers`` are the
intake endpoints, ``status`` the ones that read the whole sidecar's state. Never imports ``export``:
an intake process loads no exporter.
"""
