"""A small real Django project for the adapters' tests (run by tests/contrib/test_django.py).

The environment chooses the databases: DJANGO_DATABASE_URL (sqlite path or a
PostgreSQL URL) for Django's own tables, SAFEKEEPER_DATA_DIR and (optionally)
SAFEKEEPER_DATABASE_URL for safekeeper's catalog.
"""

import os
from pathlib import Path
from urllib.parse import urlparse

SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
USE_TZ = True
ROOT_URLCONF = "tests.contrib.django_project.urls"
AUTH_USER_MODEL = "djapp.Member"
LOGIN_URL = "/login/"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast tests only
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "safekeeper.contrib.django",
    "tests.contrib.django_project.djapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
SESSION_ENGINE = "safekeeper.contrib.django.sessions"

_url = os.environ.get("DJANGO_DATABASE_URL", "")
if _url.startswith("postgresql"):
    _parsed = urlparse(_url.replace("postgresql+psycopg", "postgresql"))
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": _parsed.path.lstrip("/"),
            "USER": _parsed.username or "",
            "HOST": _parsed.hostname or "",
            "PORT": str(_parsed.port or ""),
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _url or str(Path(os.environ["SAFEKEEPER_DATA_DIR"]) / "django.db"),
        }
    }

STORAGES = {
    "default": {
        "BACKEND": "safekeeper.contrib.django.SafekeeperStorage",
        "OPTIONS": {
            "data_dir": os.environ["SAFEKEEPER_DATA_DIR"],
            "namespace": "media",
            "base_url": "/media/",
        },
    },
}
