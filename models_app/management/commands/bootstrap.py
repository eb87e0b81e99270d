from django.core.management.base import BaseCommand

from models_app.bootstrap import ADMIN_USERNAME, bootstrap


class Command(BaseCommand):
    help = "First-run setup: seed registry, bundled SmolLM2 models, admin user and API key. Idempotent."

    def handle(self, *args, **options):
        report = bootstrap()
        if report["seed_imported"]:
            self.stdout.write("Imported the seed registry.")
        for name in report["bundled_added"]:
            self.stdout.write(f"Registered the bundled model {name}.")
        if report["default_set"]:
            self.stdout.write(f"Default model: {report['default_set']}.")
        if "admin_password" in report:
            self.stdout.write(self.style.WARNING("Shown once — store them now:"))
            self.stdout.write(f"  admin user: {ADMIN_USERNAME}  password: {report['admin_password']}")
            self.stdout.write(f"  admin API key: {report['api_key']}")
        if not (report["seed_imported"] or report["bundled_added"] or "admin_password" in report):
            self.stdout.write("Nothing to do: already bootstrapped.")
