from django.core.management.base import BaseCommand, CommandError

from beautyai_site.api.errors import APIError
from beautyai_site.api.jsonsafe import loads_untrusted
from models_app.registry_io import registry_import


class Command(BaseCommand):
    help = "Import a registry file in the seed format (model_registry.json). Idempotent."

    def add_arguments(self, parser):
        parser.add_argument("path")
        parser.add_argument("--replace", action="store_true", help="overwrite entries that already exist")

    def handle(self, path, replace, **options):
        try:
            with open(path, encoding="utf-8") as handle:
                data = loads_untrusted(handle.read())
            result = registry_import(data=data, replace=replace)
        except (OSError, ValueError) as exc:
            raise CommandError(f"cannot read {path}: {exc}") from None
        except APIError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(
            f"created {len(result['created'])}, updated {len(result['updated'])}, unchanged {len(result['unchanged'])}"
        )
