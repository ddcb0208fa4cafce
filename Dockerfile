# syntax=docker/dockerfile:1
# Build: docker build -t grokchat .   Run: see docker-compose.yml and README "Production".

FROM python:3.12-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml ./
# Only the pinned dependencies go into the venv; the app runs from /app.
RUN python -m venv /venv \
    && /venv/bin/python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && /venv/bin/pip install -r requirements.txt

FROM python:3.12-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/venv/bin:$PATH \
    DJANGO_DEBUG=false
RUN groupadd --system --gid 10001 chat \
    && useradd --system --uid 10001 --gid chat --home-dir /app --shell /usr/sbin/nologin chat
COPY --from=builder /venv /venv
WORKDIR /app
COPY manage.py ./
COPY chatsite ./chatsite
COPY chat ./chat
COPY templates ./templates
COPY static ./static
COPY docker ./docker
# Static files are collected at build time with a throwaway key; nothing else runs here.
# Migrations run when the container starts (docker/start.sh), never at build.
# /app/data/media (MEDIA_ROOT) is owned by the app's user, so a new volume mounted there is.
RUN DJANGO_SECRET_KEY=collectstatic-only-not-a-secret-0123456789-abcdefghijklmnop \
    DJANGO_ALLOWED_HOSTS=localhost \
    python manage.py collectstatic --noinput --verbosity 0 \
    && mkdir -p /app/data/media && chown -R chat:chat /app/data
USER chat
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/app/docker/healthcheck.py"]
# Daphne gets SIGTERM on `docker stop`: answers in flight are saved as interrupted.
STOPSIGNAL SIGTERM
CMD ["/app/docker/start.sh"]
