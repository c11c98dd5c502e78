"""The WSGI application: Django wrapped in devmesh's middleware.

api.localhost and *.tenant.localhost are mounted on the same Django app; the middleware records which
pattern matched, and mysite.hosts picks that host's URLconf. Requests for the mesh's other services go
to the mesh; /_devmesh/health is answered on every host.
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

from devmesh.wsgi import DevmeshWSGIMiddleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

django_app = get_wsgi_application()
application = DevmeshWSGIMiddleware(django_app, hosts={"api": django_app, "*.tenant": django_app})
