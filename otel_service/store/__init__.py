"""The event store: the sidecar's own record of every accepted event, one row each, in an embedded
SQLite file (WAL) beside the spool.

``schema`` is the table (the lab's ``ai_metrics`` columns as a view), ``writer`` the store process's
side (a transaction per batch, idempotent by event ID), ``retention`` the age and size bounds,
``queries`` the analytics, ``lookup`` a request's rows by ID, ``reader`` the intake's read-only side;
``dialect`` holds everything that is SQLite's own, so a shared PostgreSQL can take its place. Depends
on ``model`` and the standard library only: the export worker feeds it through its ``StoreLink``
protocol, and ``runtime.store_link`` runs it in a process of its own.
"""

from .queries import Slice
from .reader import AnalyticsReader, StoreTimeout
from .retention import Retention, Swept
from .schema import DerivedRecord
from .writer import EventStore, StoreError, status_of

__all__ = [
    "AnalyticsReader",
    "DerivedRecord",
    "EventStore",
    "Retention",
    "Slice",
    "StoreError",
    "StoreTimeout",
    "Swept",
    "status_of",
]
