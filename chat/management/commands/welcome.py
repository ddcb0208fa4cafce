import os

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Say where the app runs and how to log in for the first time."

    def handle(self, *args, **options) -> None:
        # Where `make run` serves (Makefile): HOST and PORT, from the environment or .env.
        host = os.environ.get("HOST") or "127.0.0.1"
        port = os.environ.get("PORT") or "8000"
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
        if not get_user_model().objects.exists():
            self.stdout.write(
                self.style.SUCCESS(
                    f"No user exists yet: open {url} and create the first admin account there."
                )
            )
        else:
            self.stdout.write(self.style.SUCCESS(f"Open {url} and log in."))
        if not settings.XAI_API_KEY:
            self.stdout.write(
                self.style.WARNING(
                    "XAI_API_KEY is not set: the app runs, but answers need a key "
                    "(XAI_API_KEY=xai-... make run, or put it in .env)."
                )
            )
