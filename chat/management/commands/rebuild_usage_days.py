from django.core.management.base import BaseCommand

from chat.models import UsageDay


class Command(BaseCommand):
    help = "Recompute the daily usage totals (what reports and budgets read) from the ledger."

    def handle(self, *args, **options) -> None:
        days = UsageDay.rebuild()
        self.stdout.write(self.style.SUCCESS(f"{days} daily totals rebuilt from the ledger."))
