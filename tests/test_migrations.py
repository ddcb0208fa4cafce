"""Data migrations, run on real rows: migrate back, write as the old schema did, migrate."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

pytestmark = pytest.mark.django_db(transaction=True)


def migrate(target: str) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([("chat", target)])
    executor.loader.build_graph()
    return executor


@pytest.fixture(autouse=True)
def latest_schema_after():
    """The tests that follow expect every migration applied."""
    yield
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def test_existing_conversations_become_single_branch_trees(django_user_model):
    old = migrate("0006_ledger_outlives_users_and_conversations").loader.project_state(
        ("chat", "0006_ledger_outlives_users_and_conversations")
    )
    user = django_user_model.objects.create_user("alice")
    Conversation = old.apps.get_model("chat", "Conversation")
    Message = old.apps.get_model("chat", "Message")
    ids = {}
    for name in ("one", "two"):
        conversation = Conversation.objects.create(user_id=user.pk, title=name)
        ids[name] = [
            Message.objects.create(conversation=conversation, role=role, content=f"{name} {i}").pk
            for i, role in enumerate(["user", "assistant", "user", "assistant"])
        ]

    migrate("0008_single_branch_trees")

    from chat.models import Conversation as Current
    from chat.models import Message as CurrentMessage

    for name, chain in ids.items():
        conversation = Current.objects.get(title=name)
        assert conversation.tree().path() == chain
        rows = CurrentMessage.objects.filter(pk__in=chain).order_by("pk")
        assert [m.parent_id for m in rows] == [None, *chain[:-1]]
        assert [m.purpose for m in rows] == ["", "answer", "", "answer"]
        assert all(m.selected_at == m.created_at for m in rows)
