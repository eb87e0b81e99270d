"""API keys move here from system_app, table and rows untouched.

The model enters this app's state only (its table, ``system_app_apikey``, already exists); the
foreign keys pointing at it are re-pointed in state by inference_app 0005 and system_app 0004,
which then drops the old model from state. Its content type is renamed rather than recreated, so
that the add/change/delete/view permission rows, the groups and users holding them, guardian's
object permissions and admin log entries keep their ids.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def move_content_type(apps, schema_editor, source="system_app", target="accounts"):
    ContentType = apps.get_model("contenttypes", "ContentType")
    # A database migrated from zero has no row yet (they are made after migrating); then the usual
    # post_migrate pass creates it under the new label.
    if not ContentType.objects.filter(app_label=target, model="apikey").exists():
        ContentType.objects.filter(app_label=source, model="apikey").update(app_label=target)


def restore_content_type(apps, schema_editor):
    move_content_type(apps, schema_editor, source="accounts", target="system_app")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("system_app", "0003_userpreference_translatable_labels"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="APIKey",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("name", models.CharField(default="default", max_length=100, verbose_name="name")),
                        ("prefix", models.CharField(editable=False, max_length=8, unique=True, verbose_name="prefix")),
                        ("key_hash", models.CharField(editable=False, max_length=64, verbose_name="key hash")),
                        ("created_at", models.DateTimeField(auto_now_add=True, verbose_name="created")),
                        ("expires_at", models.DateTimeField(blank=True, help_text="Empty: the key never expires.", null=True, verbose_name="expires")),
                        ("revoked_at", models.DateTimeField(blank=True, null=True, verbose_name="revoked")),
                        ("last_used_at", models.DateTimeField(blank=True, editable=False, null=True, verbose_name="last used")),
                        ("user", models.ForeignKey(help_text="The key acts as this user, with their permissions.", on_delete=django.db.models.deletion.CASCADE, related_name="api_keys", to=settings.AUTH_USER_MODEL, verbose_name="user")),
                    ],
                    options={
                        "verbose_name": "API key",
                        "verbose_name_plural": "API keys",
                        "ordering": ["-created_at"],
                        "db_table": "system_app_apikey",
                    },
                ),
            ],
        ),
        migrations.RunPython(move_content_type, restore_content_type),
    ]
