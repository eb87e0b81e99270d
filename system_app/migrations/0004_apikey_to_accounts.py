"""API keys now belong to the accounts app (accounts 0001): audit events point there, and the model
leaves this app's state. Nothing changes in the database: the table and its rows stay."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("accounts", "0001_initial"),
        # Usage records must stop pointing at system_app.APIKey before it leaves the state.
        ("inference_app", "0006_apikey_in_accounts"),
        ("system_app", "0003_userpreference_translatable_labels"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="auditevent",
                    name="api_key",
                    field=models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, to="accounts.apikey", verbose_name="API key"),
                ),
                migrations.DeleteModel(name="APIKey"),
            ],
        ),
    ]
