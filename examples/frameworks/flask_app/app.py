"""Flask under devmesh: one WSGI process serves web.localhost, api.localhost and every
*.tenant.localhost, and passes requests for the mesh's other services to the mesh.

Run it with `devmesh up` here, or alone with `flask --app app run --port 8000`.
"""

from __future__ import annotations

from flask import Flask, jsonify, request

from devmesh.wsgi import DevmeshWSGIMiddleware

api = Flask("api")


@api.get("/items")
def list_items() -> object:
    return jsonify(service="api", items=["teapot", "kettle"])


tenants = Flask("tenants")


@tenants.get("/")
def tenant_home() -> object:
    # For acme.tenant.localhost the wildcard part is "acme".
    return jsonify(service="tenants", tenant=request.environ["devmesh.wildcard"])


app = Flask(__name__)


@app.get("/")
def home() -> object:
    return jsonify(service="web", subdomain=request.environ.get("devmesh.subdomain"))


app.wsgi_app = DevmeshWSGIMiddleware(  # type: ignore[method-assign]
    app.wsgi_app, hosts={"api": api, "*.tenant": tenants}, version="1.0.0"
)
