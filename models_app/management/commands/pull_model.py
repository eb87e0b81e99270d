import sys

from django.core.management.base import BaseCommand, CommandError

from beautyai_site.api import errors
from models_app import downloads
from models_app.models import ModelConfig, ModelDownload


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


class Command(BaseCommand):
    help = ("Download NAME's files from the Hugging Face hub (HF_ENDPOINT) into the cache, like `ollama pull`. "
            "Ctrl-C cancels and keeps partial files for the next pull.")

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--revision", default=None, help="branch, tag or commit (default: the entry's, or main)")

    def handle(self, name, revision, **options):
        model = ModelConfig.objects.filter(name=name).first()
        if model is None:
            raise CommandError(f"no model named {name!r} in the registry")
        show = _Bar() if sys.stdout.isatty() else _Lines(self.stdout)
        try:
            job = downloads.pull(model, revision=revision, on_progress=show.update)
        except errors.APIError as exc:
            raise CommandError(exc.message) from None
        finally:
            show.close()
        if job.status == ModelDownload.DONE:
            self.stdout.write(f"{name}: done, {_mb(job.bytes_total)} in {job.files_total} file(s)")
            return
        if job.status == ModelDownload.CANCELLED:
            raise CommandError(f"{name}: cancelled; partial files are kept for the next pull", returncode=130)
        raise CommandError(f"{name}: {job.status}: {job.error}")


class _Lines:
    """Plain progress lines when the output is not a terminal (logs, CI): one per 10 % and at the end."""

    def __init__(self, out):
        self.out = out
        self.next_step = 0

    def update(self, job: ModelDownload) -> None:
        share = job.bytes_done / job.bytes_total if job.bytes_total else 0.0
        if share * 10 >= self.next_step or not job.active:
            eta = f", ETA {job.eta_seconds:.0f} s" if job.eta_seconds is not None else ""
            self.out.write(f"{job.model_name}: {job.status} {_mb(job.bytes_done)} of {_mb(job.bytes_total)} "
                           f"({share:.0%}), {_mb(job.speed_bytes_per_second)}/s{eta}")
            self.next_step = int(share * 10) + 1

    def close(self) -> None:
        pass


class _Bar:
    def __init__(self):
        self.bar = None

    def update(self, job: ModelDownload) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=job.bytes_total, unit="B", unit_scale=True, desc=job.model_name)
        self.bar.update(job.bytes_done - self.bar.n)
        self.bar.set_postfix_str(job.status)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
