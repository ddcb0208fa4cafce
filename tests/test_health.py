"""/healthz: what a load balancer asks before it sends people to a process."""

from __future__ import annotations

import pytest
from django.test import override_settings

from tests.live import app_env, manage

pytestmark = pytest.mark.django_db(transaction=True)

DEAD_REDIS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
    }
}


async def test_it_answers_200_when_the_database_and_channel_layer_answer(async_client):
    response = await async_client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "channel_layer": "ok"}


async def test_it_answers_503_when_the_channel_layer_is_down(async_client, caplog):
    with override_settings(CHANNEL_LAYERS=DEAD_REDIS):
        response = await async_client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"database": "ok", "channel_layer": "down"}
    assert "channel layer does not answer" in caplog.text


def test_it_answers_503_when_the_database_is_down(tmp_path):
    # A process whose SQLite file sits in a directory that does not exist.
    env = app_env(tmp_path, "http://127.0.0.1:9/v1", DJANGO_ALLOWED_HOSTS="testserver")
    env.pop("DATABASE_URL", None)
    env["SQLITE_PATH"] = str(tmp_path / "no-such-dir" / "db.sqlite3")
    script = (
        "from django.test import Client; r = Client().get('/healthz');"
        "print(r.status_code, r.content.decode())"
    )
    out = manage(env, "shell", "-c", script).strip().splitlines()[-1]
    assert out == '503 {"database": "down", "channel_layer": "ok"}'
