# Apart from 0007: PostgreSQL refuses the new foreign key's index in a transaction that
# has just updated the rows it checks ("pending trigger events").

from django.db import migrations, models


def single_branch_trees(apps, schema_editor):
    """Each existing message follows the one before it: one branch per conversation."""
    Message = apps.get_model("chat", "Message")
    previous = Message.objects.filter(
        conversation=models.OuterRef("conversation"), id__lt=models.OuterRef("id")
    ).order_by("-id")
    Message.objects.update(
        parent=models.Subquery(previous.values("id")[:1]), selected_at=models.F("created_at")
    )
    Message.objects.filter(role="assistant").update(purpose="answer")


class Migration(migrations.Migration):
    dependencies = [("chat", "0007_conversation_tree")]

    operations = [migrations.RunPython(single_branch_trees, migrations.RunPython.noop)]
