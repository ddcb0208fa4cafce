from django.core.management.base import BaseCommand, CommandError

from chat.catalog import failure_text, sync_prices


class Command(BaseCommand):
    help = "Fetch xAI's list prices (GET /v1/language-models); prices set by admins are kept."

    def handle(self, *args, **options) -> None:
        try:
            count = sync_prices()
        except Exception as exc:
            raise CommandError(f"Could not fetch prices: {failure_text(exc)}") from None
        self.stdout.write(self.style.SUCCESS(f"{count} model prices stored from xAI's list."))
