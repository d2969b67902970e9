"""
Django settings for djsite: a `django-admin startproject` project (Django 5.2),
trimmed for pb's end-to-end tests. No database, no contrib apps except
staticfiles (whose runserver is the one users normally get).
"""

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

# Test fixture only; not a secret.
SECRET_KEY = "django-insecure-pb-realapps-test-fixture-not-a-secret"

DEBUG = True

ALLOWED_HOSTS = ["localhost", "127.0.0.1", "[::1]", "::1"]

INSTALLED_APPS = [
    "django.contrib.staticfiles",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]

ROOT_URLCONF = "djsite.urls"

TEMPLATES = []

WSGI_APPLICATION = "djsite.wsgi.application"

# No database: runserver then skips the migrations check.
DATABASES = {}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
