"""Django's PostgreSQL backend, whose connection pool never lends a dead connection.

After PostgreSQL restarts, or ends its backends (pg_terminate_backend, a failover), every
connection idle in the pool is dead, and each one lent out failed its request with a 500.
psycopg_pool's own check (CONN_HEALTH_CHECKS) finds them one lending at a time and waits
1, 2, 4… s between finds: with ten dead, the first request timed out. Here the first dead
connection found has the pool check all its idle ones at once (ConnectionPool.check).
"""

from __future__ import annotations

from typing import Any

import psycopg
from django.db.backends.postgresql import base
from psycopg_pool import ConnectionPool


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        connection = super().get_new_connection(conn_params)
        # (django-stubs 5.2 does not know the pool Django 5.1 added.)
        pool: ConnectionPool | None = self.pool  # type: ignore[attr-defined]
        if pool is None:
            return connection
        tries = 3
        while True:
            try:
                ConnectionPool.check_connection(connection)
                return connection
            except psycopg.Error:
                pool.putconn(connection)  # the pool closes it: its state says it failed
                tries -= 1
                if not tries:  # PostgreSQL is down, or ends every connection it opens
                    raise
                # Drops the other dead ones and opens new connections in their place.
                pool.check()
                connection = super().get_new_connection(conn_params)
