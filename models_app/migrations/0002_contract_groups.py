"""The contract's permissions and the three standard groups.

Permissions are normally created after migrations (post_migrate); the groups need them now, so
they are created here with get_or_create and stay idempotent with Django's own pass.
"""

from django.db import migrations

VIEWER = ["model_read", "system_status", "session_load"]
OPERATOR = VIEWER + ["model_load", "chat", "test", "benchmark", "session_save", "session_delete", "cache_clear"]
ADMINISTRATOR = OPERATOR + ["model_write", "model_delete", "admin"]
GROUPS = {"viewer": VIEWER, "operator": OPERATOR, "administrator": ADMINISTRATOR}


def create_groups(apps, schema_editor):
    from accounts.permissions import CONTRACT_PERMISSIONS

    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    content_type, _ = ContentType.objects.get_or_create(app_label="models_app", model="modelconfig")
    permissions = {}
    for codename, label in CONTRACT_PERMISSIONS.items():
        permissions[codename], _ = Permission.objects.get_or_create(
            content_type=content_type, codename=codename, defaults={"name": label}
        )
    for group_name, codenames in GROUPS.items():
        group, _ = Group.objects.get_or_create(name=group_name)
        group.permissions.add(*(permissions[c] for c in codenames))


def remove_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=GROUPS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("models_app", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(create_groups, remove_groups)]
