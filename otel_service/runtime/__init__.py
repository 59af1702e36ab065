"""The composition roots: the only place components are wired, processes started and signals handled.

``app`` is the first intake process (``run`` is ``otel-service serve``); ``wiring`` wires intake for
both intake roles; ``export_host``/``export_process`` host the export side; ``intake_group`` and
``intake_process`` run several intake processes on one port; ``store_process`` is the event store's
process and ``store_link`` the export worker's end of it; ``loop`` the event loop and listening.
Nothing is imported here: each process imports only its own entry point.
"""
