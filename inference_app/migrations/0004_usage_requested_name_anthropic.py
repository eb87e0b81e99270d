from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('inference_app', '0003_translatable_labels'),
    ]

    operations = [
        migrations.AddField(
            model_name='usagerecord',
            name='requested_name',
            field=models.CharField(blank=True, max_length=128, verbose_name='requested name'),
        ),
        migrations.AlterField(
            model_name='usagerecord',
            name='transport',
            field=models.CharField(choices=[('rest', 'rest'), ('sse', 'sse'), ('websocket', 'websocket'), ('openai', 'openai'), ('anthropic', 'anthropic'), ('test', 'test'), ('benchmark', 'benchmark')], max_length=16, verbose_name='transport'),
        ),
    ]
