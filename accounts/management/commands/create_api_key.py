from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from accounts.services import create_api_key


class Command(BaseCommand):
    help = "Create an API key for USERNAME; the key is printed once, as the last line."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="default")
        parser.add_argument("--expires-days", type=int, default=None)

    def handle(self, username, name, expires_days, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user named {username!r}")
        if expires_days is not None and expires_days < 1:
            raise CommandError("--expires-days must be at least 1")
        expires_at = timezone.now() + timedelta(days=expires_days) if expires_days else None
        key, raw = create_api_key(user=user, name=name, expires_at=expires_at)
        self.stdout.write(f"Created API key {key.name!r} for {username} (shown once):")
        self.stdout.write(raw)
