import json

from django.core.management.base import BaseCommand

from models_app.registry_io import registry_export, write_json_atomically


class Command(BaseCommand):
    help = "Export the registry in the seed format; to PATH (written atomically) or to standard output."

    def add_arguments(self, parser):
        parser.add_argument("path", nargs="?")

    def handle(self, path=None, **options):
        data = registry_export()
        if path:
            write_json_atomically(path, data)
            self.stdout.write(f"wrote {len(data['models'])} models to {path}")
        else:
            self.stdout.write(json.dumps(data, indent=2, ensure_ascii=False))
