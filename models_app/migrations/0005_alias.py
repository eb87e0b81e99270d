import django.core.validators
import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('models_app', '0004_translatable_labels'),
    ]

    operations = [
        migrations.CreateModel(
            name='Alias',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('name', models.CharField(help_text='Used in place of a model name by /v1, /v1/messages and the chat routes.', max_length=128, unique=True, validators=[django.core.validators.RegexValidator('^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$')], verbose_name='name')),
                ('description', models.TextField(blank=True, verbose_name='description')),
                ('created_at', models.DateTimeField(auto_now_add=True, verbose_name='created')),
                ('fallback', models.ForeignKey(blank=True, help_text='Used when the target is in error, cannot be loaded, or is not loaded and the caller may not load it.', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='fallback_for', to='models_app.modelconfig', verbose_name='fallback')),
                ('target', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='aliases', to='models_app.modelconfig', verbose_name='target')),
            ],
            options={
                'verbose_name': 'model alias',
                'verbose_name_plural': 'model aliases',
                'ordering': ['name'],
                'default_permissions': (),
            },
        ),
    ]
