"""Settings for the chat site, read from environment variables (see README)."""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

BASE_DIR = Path(__file__).resolve().parent.parent


def envbool(name: str, default: str) -> bool:
    value = os.getenv(name, default).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {value!r}")


def envint(name: str, default: int) -> int:
    value = os.getenv(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {value!r}") from None


def envlimit(name: str, default: int) -> int:
    """A limit: a whole number, 0 meaning no limit."""
    value = envint(name, default)
    if value < 0:
        raise ImproperlyConfigured(f"{name} must be 0 (no limit) or more, not {value}")
    return value


def envcount(name: str, default: int) -> int:
    """A whole number, 1 or more."""
    value = envint(name, default)
    if value < 1:
        raise ImproperlyConfigured(f"{name} must be 1 or more, not {value}")
    return value


def envfloat(name: str, default: float) -> float:
    value = os.getenv(name, "").strip()
    if not value:
        return default
    try:
        result = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {value!r}") from None
    if result <= 0:
        raise ImproperlyConfigured(f"{name} must be positive, not {value!r}")
    return result


def envsecret(name: str) -> str:
    """A secret as one word: surrounding whitespace dropped (a CRLF .env file leaves a CR,
    which httpx refuses, quoting the whole header in its error); anything but visible
    ASCII inside refused, saying where and never what the secret is."""
    value = os.getenv(name, "").strip()
    for position, char in enumerate(value, 1):
        if not "!" <= char <= "~":
            raise ImproperlyConfigured(
                f"{name} must be one word of visible ASCII characters, but character "
                f"{position} of {len(value)} is U+{ord(char):04X} (a control character, "
                "a space or not ASCII). Check the file or the environment it comes from."
            )
    return value


def envchoice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.getenv(name, default).strip() or default
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


DEBUG = envbool("DJANGO_DEBUG", "false")
SECRET_KEY = os.getenv("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        # A fresh clone must just run: keep a random key on disk next to the SQLite file.
        key_file = BASE_DIR / "data" / "secret_key"
        key_file.parent.mkdir(exist_ok=True)
        if not key_file.exists():
            from django.core.management.utils import get_random_secret_key

            key_file.write_text(get_random_secret_key())
            key_file.chmod(0o600)
        SECRET_KEY = key_file.read_text().strip()
    else:
        SECRET_KEY = "insecure-debug-only-key"

ALLOWED_HOSTS = [
    h.strip()
    for h in os.getenv("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")
    if h.strip()
]
if "*" in ALLOWED_HOSTS and not DEBUG:
    raise ImproperlyConfigured(
        "DJANGO_ALLOWED_HOSTS contains '*': with DEBUG off this would let every site open "
        "websockets to the chat. List the host names instead."
    )

# -- HTTPS ---------------------------------------------------------------------------
# Served over https, by Daphne itself or (the usual case) a TLS-terminating proxy? Yes by
# default in production; no with DEBUG on or when every allowed host is loopback, as in
# `make run` and the tests, which serve plain http on 127.0.0.1.
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
HTTPS = envbool("DJANGO_HTTPS", str(not DEBUG and not set(ALLOWED_HOSTS) <= LOOPBACK_HOSTS))
SESSION_COOKIE_SECURE = envbool("DJANGO_SESSION_COOKIE_SECURE", str(HTTPS))
CSRF_COOKIE_SECURE = envbool("DJANGO_CSRF_COOKIE_SECURE", str(HTTPS))
# Opt in when a proxy in front sets X-Forwarded-Proto (and strips it from clients).
BEHIND_TLS_PROXY = envbool("DJANGO_SECURE_PROXY_SSL_HEADER", "false")
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Redirect only where https requests can be told apart: behind a proxy that does not say
# so, every request looks like http and the redirect would loop.
SECURE_SSL_REDIRECT = envbool("DJANGO_SECURE_SSL_REDIRECT", str(HTTPS and BEHIND_TLS_PROXY))
SECURE_HSTS_SECONDS = envint("DJANGO_SECURE_HSTS_SECONDS", 31536000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", str(HTTPS))
SECURE_HSTS_PRELOAD = envbool("DJANGO_SECURE_HSTS_PRELOAD", str(HTTPS))
# Forms posted from https://<allowed host> pass the CSRF origin check even when a proxy
# does not tell Django the request came over https.
CSRF_TRUSTED_ORIGINS = [
    o.strip() for o in os.getenv("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()
] or [
    f"https://*{h}" if h.startswith(".") else f"https://{h}"
    for h in ALLOWED_HOSTS
    if HTTPS and h not in LOOPBACK_HOSTS
]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "axes",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Before whitenoise, so static files carry the policy too.
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "chat.middleware.RefusalLogMiddleware",
    # Last, as axes asks: it turns a lockout found while the view ran into the refusal page.
    "axes.middleware.AxesMiddleware",
]

# Scripts and styles only from our own origin: model output can never run script.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "frame-ancestors": [NONE],
        "form-action": [SELF],
    }
}

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "chat.themes.theme",
            ],
        },
    },
]

DATABASE_URL = os.getenv("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
    if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        # Django's backend, but its pool checks each connection before lending it and
        # replaces the dead ones (after a PostgreSQL restart) at once: chatsite/postgresql.
        DATABASES["default"]["ENGINE"] = "chatsite.postgresql"
        # Under ASGI no connection is kept per thread; a pool lends one per database call
        # (opening a PostgreSQL connection costs milliseconds, docs/benchmarks.md).
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 2,
            "max_size": envint("DATABASE_POOL_SIZE", 10),
            "timeout": 10,
        }
else:
    (BASE_DIR / "data").mkdir(exist_ok=True)
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.getenv("SQLITE_PATH", str(BASE_DIR / "data" / "db.sqlite3")),
            # Database calls run in asgiref's one thread-sensitive thread: keep its
            # connection rather than open one (with its PRAGMAs) for every call.
            "CONN_MAX_AGE": 600,
            "CONN_HEALTH_CHECKS": True,
            # WAL lets readers run beside a writer; IMMEDIATE takes the write lock up
            # front so concurrent answers wait (busy timeout) instead of failing.
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }

REDIS_URL = os.getenv("REDIS_URL", "")
# Keeps apps (or test runs) that share one Redis apart.
REDIS_PREFIX = os.getenv("REDIS_PREFIX", "grokchat")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # capacity: messages waiting per channel before channels_redis drops new ones
            # (group sends only log it, at INFO). The channels of one process share ONE
            # Redis queue ("specific.<process>!"): 1,000 answers starting at once queued
            # 1,000 messages there and hit the default (docs/benchmarks.md), so that
            # queue gets room for a burst of a whole process; messages expire in 30 s.
            "CONFIG": {
                # redis-py 8 reads with a 5 s timeout and refuses the 101st connection by
                # default: under load that killed consumers (docs/benchmarks.md).
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_timeout": 60,
                        "max_connections": 2000,
                        # redis-py retries nothing by default: after a Redis restart the
                        # pool's dead connections failed the next commands (handshakes
                        # answered 500). Once more on a fresh connection, at once; a Redis
                        # that stays down still fails fast (sockets close with 4503).
                        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                    }
                ],
                "capacity": 1000,
                "channel_capacity": {"specific.*": 100_000},
                "expiry": 30,
                "prefix": REDIS_PREFIX,
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels.layers.InMemoryChannelLayer", "CONFIG": {"capacity": 1000}}
    }

# The cache holds the model list and the login throttle's (django-axes) counters. Without Redis it is
# in memory and per process: with several processes each counts failed logins apart.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": REDIS_PREFIX,
        }
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Django's default hashers, the first one queued (chat/hashers.py): a process hashes at most
# this many passwords at once, at a low CPU priority, so that logins leave CPU for answers.
PASSWORD_HASHERS = [
    "chat.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]
PASSWORD_HASHING_THREADS = envint("PASSWORD_HASHING_THREADS", 1)
if PASSWORD_HASHING_THREADS < 1:
    raise ImproperlyConfigured("PASSWORD_HASHING_THREADS must be 1 or more")

# django-axes: the first backend refuses logins while a username or address is locked out;
# the plain one checks passwords and keeps sessions made by the setup page valid.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# This many failed logins within LOGIN_LOCKOUT_SECONDS, for one username or one client
# address, lock it for LOGIN_LOCKOUT_SECONDS. 0 failures turns the throttle off.
LOGIN_MAX_FAILURES = envint("LOGIN_MAX_FAILURES", 5)
LOGIN_LOCKOUT_SECONDS = envint("LOGIN_LOCKOUT_SECONDS", 900)
AXES_ENABLED = LOGIN_MAX_FAILURES > 0 and LOGIN_LOCKOUT_SECONDS > 0
AXES_FAILURE_LIMIT = LOGIN_MAX_FAILURES
AXES_COOLOFF_TIME = timedelta(seconds=LOGIN_LOCKOUT_SECONDS)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
# The cache handler, not the database one: counters expire by themselves, are shared through
# Redis with REDIS_URL, and a flood of failed logins writes no rows.
AXES_HANDLER = "axes.handlers.cache.AxesCacheHandler"
AXES_RESET_ON_SUCCESS = True
# A lockout lasts LOGIN_LOCKOUT_SECONDS from the failure that caused it, not from the last try.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# REMOTE_ADDR only: Daphne --proxy-headers sets it from the proxy's X-Forwarded-For, and
# headers a client sends itself must not pick the address that is counted.
AXES_CLIENT_IP_CALLABLE = "chat.views.client_address"
AXES_USERNAME_CALLABLE = "chat.views.login_username"
AXES_LOCKOUT_CALLABLE = "chat.views.lockout_response"
# Its log lines name the account and the address (it masks both by default), as ours did.
AXES_SENSITIVE_PARAMETERS: list[str] = []
# Its admin pages list the database handler's rows, which the cache handler never writes.
AXES_ENABLE_ADMIN = False
if not REDIS_URL:
    # axes warns about a per-process cache; without Redis that is the documented behaviour.
    SILENCED_SYSTEM_CHECKS = ["axes.W001"]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "index"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Uploaded images (chat.attachments): files under MEDIA_ROOT, served only to their owner by
# chat.views (never as static files: there is no MEDIA_URL). Several processes must share
# it (docker-compose.yml mounts one volume into every app container).
MEDIA_ROOT = Path(os.getenv("MEDIA_ROOT", "").strip() or BASE_DIR / "data" / "media")

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
if DEBUG or not (STATIC_ROOT / "staticfiles.json").exists():
    # No collectstatic yet (a fresh clone, tests): serve from the source tree.
    STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
    WHITENOISE_USE_FINDERS = True
    WHITENOISE_AUTOREFRESH = DEBUG

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

# The upstream (xAI or any OpenAI-compatible server)
XAI_API_KEY = envsecret("XAI_API_KEY")
XAI_BASE_URL = os.getenv("XAI_BASE_URL", "https://api.x.ai/v1").rstrip("/")
# "auto": the Responses API for api.x.ai, chat completions for any other server; read it
# through chat.capabilities.api_style(), which resolves it.
XAI_API_STYLE = envchoice(
    "XAI_API_STYLE", "auto", ("auto", "chat_completions", "responses", "anthropic_messages")
)
# Responses API `store`: whether xAI keeps each response (30 days). Off, the app sends
# every answer's encrypted reasoning back itself (it keeps the history either way).
XAI_STORE = envbool("XAI_STORE", "false")
CHAT_DEFAULT_MODEL = os.getenv("CHAT_DEFAULT_MODEL", "grok-4")
CHAT_MAX_MESSAGE_CHARS = envint("CHAT_MAX_MESSAGE_CHARS", 32000)
# The history sent upstream is cut, oldest turns first, to fit the model's context window
# less room for the answer (token counts estimated at 4 characters a token).
CHAT_CONTEXT_TOKENS = envint("CHAT_CONTEXT_TOKENS", 131072)
CHAT_ANSWER_RESERVE_TOKENS = envint("CHAT_ANSWER_RESERVE_TOKENS", 16384)
# After a new conversation's first answer, one more upstream request asks this model (""
# means the conversation's own) for a short title (chat.titles, docs/usage.md).
CHAT_TITLES = envbool("CHAT_TITLES", "true")
CHAT_TITLE_MODEL = os.getenv("CHAT_TITLE_MODEL", "").strip()

# Images a user may attach (chat.attachments, docs/protocol.md "Attachments"): the largest
# file, the most per message, and the most uploaded and not sent yet per user.
CHAT_MAX_IMAGE_BYTES = envcount("CHAT_MAX_IMAGE_BYTES", 10 * 1024 * 1024)
CHAT_MAX_IMAGES = envcount("CHAT_MAX_IMAGES", 4)
CHAT_MAX_PENDING_IMAGES = envcount("CHAT_MAX_PENDING_IMAGES", 20)
# Models that take images where the upstream's model list does not say (its
# `input_modalities`): ids or id prefixes, comma-separated; empty: none.
CHAT_IMAGE_MODELS = [m.strip() for m in os.getenv("CHAT_IMAGE_MODELS", "").split(",") if m.strip()]

# Imports (chat.exports, docs/export-format.md): the largest file, checked before it is
# read, and the most conversations and messages one file may bring.
CHAT_IMPORT_MAX_BYTES = envcount("CHAT_IMPORT_MAX_BYTES", 50 * 1024 * 1024)
CHAT_IMPORT_MAX_CONVERSATIONS = envcount("CHAT_IMPORT_MAX_CONVERSATIONS", 10000)
CHAT_IMPORT_MAX_MESSAGES = envcount("CHAT_IMPORT_MAX_MESSAGES", 250000)

# The most a conversation's "max output tokens" setting may ask for; a larger setting also
# keeps that much room for the answer in the context window.
CHAT_MAX_OUTPUT_TOKENS = envint("CHAT_MAX_OUTPUT_TOKENS", 65536)
if CHAT_MAX_OUTPUT_TOKENS < 1:
    raise ImproperlyConfigured(
        f"CHAT_MAX_OUTPUT_TOKENS must be 1 or more, not {CHAT_MAX_OUTPUT_TOKENS}"
    )
# Each user's limits unless their budget (admin, "Budgets") says otherwise; 0: no limit.
# Checked in the database, so they hold across processes (docs/usage.md).
CHAT_MAX_CONCURRENT_ANSWERS = envlimit("CHAT_MAX_CONCURRENT_ANSWERS", 3)
CHAT_MAX_MESSAGES_PER_MINUTE = envlimit("CHAT_MAX_MESSAGES_PER_MINUTE", 20)
CHAT_MAX_SOCKETS_PER_USER = envlimit("CHAT_MAX_SOCKETS_PER_USER", 10)
# An open socket's row counts until this long after its process last renewed it (every
# third of it): a process killed without closing its sockets stops counting them.
SOCKET_LEASE_SECONDS = 60.0
# Reasoning models can think for minutes before the first token.
UPSTREAM_CONNECT_TIMEOUT = envfloat("UPSTREAM_CONNECT_TIMEOUT", 10.0)
UPSTREAM_FIRST_TOKEN_TIMEOUT = envfloat("UPSTREAM_FIRST_TOKEN_TIMEOUT", 600.0)
UPSTREAM_IDLE_TIMEOUT = envfloat("UPSTREAM_IDLE_TIMEOUT", 120.0)
UPSTREAM_TOTAL_TIMEOUT = envfloat("UPSTREAM_TOTAL_TIMEOUT", 3600.0)
UPSTREAM_MAX_RETRIES = envint("UPSTREAM_MAX_RETRIES", 2)
UPSTREAM_MODELS_CACHE_SECONDS = envint("UPSTREAM_MODELS_CACHE_SECONDS", 600)
# How often a streaming answer's text is saved, so that a killed process loses at most
# this much of it (0: only at the end).
STREAM_CHECKPOINT_SECONDS = envfloat("STREAM_CHECKPOINT_SECONDS", 5.0)
# Daphne buffers whatever the app sends a socket, however slowly its client reads: a socket
# whose frames the browser has not acknowledged pass this many bytes is closed (the page
# reconnects and reloads the answer). At least four times the page's ack interval, 64 KiB.
CHAT_SOCKET_BUFFER_BYTES = envint("CHAT_SOCKET_BUFFER_BYTES", 8 * 1024 * 1024)
if CHAT_SOCKET_BUFFER_BYTES < 256 * 1024:
    raise ImproperlyConfigured(
        f"CHAT_SOCKET_BUFFER_BYTES must be at least 262144 (256 KiB), not {CHAT_SOCKET_BUFFER_BYTES}"
    )

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"redacted": {"()": "chat.logs.RedactingFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "redacted"}},
    "root": {"handlers": ["console"], "level": os.getenv("DJANGO_LOG_LEVEL", "INFO")},
    "loggers": {
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        # Failures and lockouts are warnings; every successful login is not worth a line.
        "axes": {"level": "WARNING"},
        # It reports messages dropped at a full channel at INFO: always show them.
        "channels_redis": {"level": "INFO"},
    },
}
