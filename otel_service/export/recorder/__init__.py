"""The recorder: envelopes in, metric measurements, spans and log records out.

``recorder`` holds the loop, ``plans`` the part shared by events with the same labels, ``mapping``
where each field goes, ``sums`` the per-batch counter sums.
"""

from .recorder import Derived, Recorded, Recorder

__all__ = ["Derived", "Recorded", "Recorder"]
