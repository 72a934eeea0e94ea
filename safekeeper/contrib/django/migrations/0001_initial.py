from django.db import migrations, models


class Migration(migrations.Migration):  # type: ignore[misc]  # Django is untyped here
    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="SafekeeperSession",
            fields=[
                ("key_hash", models.CharField(max_length=64, primary_key=True, serialize=False)),
                ("user_id", models.CharField(db_index=True, default="", max_length=255)),
                ("session_data", models.TextField()),
                ("expire_date", models.DateTimeField(db_index=True)),
            ],
            options={"db_table": "safekeeper_django_session"},
        ),
    ]
