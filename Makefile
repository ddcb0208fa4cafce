# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install lint chromium check-deploy

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/python manage.py welcome
	$(BIN)/daphne -b 127.0.0.1 -p 8000 chatsite.asgi:application

# Browser tests drive Debian's Chromium: Playwright's own browser download cannot work here.
chromium:
	@test -x /usr/bin/chromium || { \
	  echo "Installing Debian's chromium for the browser tests..."; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; }

# Django's deployment checklist must pass with production settings (DEBUG off, a real
# secret, a public host name behind a TLS proxy): warnings fail too.
check-deploy: $(STAMP)
	env -u DATABASE_URL -u REDIS_URL DJANGO_DEBUG=false \
	  DJANGO_SECRET_KEY="$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
	  DJANGO_ALLOWED_HOSTS=chat.example.com DJANGO_SECURE_PROXY_SSL_HEADER=true \
	  $(BIN)/python manage.py check --deploy --fail-level WARNING

test: $(STAMP) chromium check-deploy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
