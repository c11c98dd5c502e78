"""The smallest settings for a Django project served under devmesh (no database, no templates)."""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "devmesh-example-only-not-secret")
DEBUG = True
# Every name under .localhost: the mesh's hosts (web.localhost, api.localhost, acme.tenant.localhost...).
ALLOWED_HOSTS = [".localhost", "localhost", "127.0.0.1", "testserver"]
ROOT_URLCONF = "mysite.urls"
# runserver serves this object, so the devmesh middleware wraps it there too.
WSGI_APPLICATION = "mysite.wsgi.application"
INSTALLED_APPS: list[str] = []
MIDDLEWARE = ["mysite.hosts.HostUrlconfMiddleware"]
DATABASES: dict[str, object] = {}
USE_TZ = True
