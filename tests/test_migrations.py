"""Data migrations, run on real rows: migrate back, write as the old schema did, migrate."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from chat.tree import Tree

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

    new = migrate("0008_single_branch_trees").loader.project_state(
        ("chat", "0008_single_branch_trees")
    )
    Message = new.apps.get_model("chat", "Message")

    for chain in ids.values():
        rows = list(Message.objects.filter(pk__in=chain).order_by("pk"))
        assert Tree.of((m.pk, m.parent_id, m.selected_at) for m in rows).path() == chain
        assert [m.parent_id for m in rows] == [None, *chain[:-1]]
        assert [m.purpose for m in rows] == ["", "answer", "", "answer"]
        assert all(m.selected_at == m.created_at for m in rows)
