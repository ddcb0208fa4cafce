#!/bin/sh
# The container's command: migrate (unless another service does), then Daphne.
set -eu
cd "$(dirname "$0")/.."
if [ "${MIGRATE_AT_START:-true}" = "true" ]; then
    python manage.py migrate --noinput
fi
exec daphne --proxy-headers -b "${BIND_ADDRESS:-0.0.0.0}" -p "${PORT:-8000}" chatsite.asgi:application
