"""Usage records point at API keys in their new app (accounts 0001); the column and its constraint stay."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("accounts", "0001_initial"),
        ("inference_app", "0005_chatmessage_tool_calls"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="usagerecord",
                    name="api_key",
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, to="accounts.apikey", verbose_name="API key"),
                ),
            ],
        ),
    ]
