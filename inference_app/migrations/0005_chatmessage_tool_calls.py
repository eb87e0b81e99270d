from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('inference_app', '0004_usage_requested_name_anthropic'),
    ]

    operations = [
        migrations.AddField(
            model_name='chatmessage',
            name='tool_call_id',
            field=models.CharField(blank=True, max_length=64, verbose_name='tool call id'),
        ),
        migrations.AddField(
            model_name='chatmessage',
            name='tool_calls',
            field=models.JSONField(blank=True, default=list, verbose_name='tool calls'),
        ),
        migrations.AlterField(
            model_name='chatmessage',
            name='finish_reason',
            field=models.CharField(blank=True, choices=[('stop', 'stop'), ('length', 'length'), ('tool_calls', 'tool calls'), ('cancelled', 'cancelled'), ('error', 'error')], max_length=16, verbose_name='finish reason'),
        ),
        migrations.AlterField(
            model_name='chatmessage',
            name='role',
            field=models.CharField(choices=[('system', 'system'), ('user', 'user'), ('assistant', 'assistant'), ('tool', 'tool')], max_length=16, verbose_name='role'),
        ),
    ]
