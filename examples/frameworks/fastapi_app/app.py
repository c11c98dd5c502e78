"""FastAPI under devmesh: one process serves web.localhost, api.localhost, admin.localhost and every
*.tenant.localhost, and passes requests for the mesh's other services (files.localhost) to the mesh.

Run it with `devmesh up` here, or alone with `uvicorn app:app --port 8000` (then only the hosts it
mounts answer; forwarding needs a running mesh: DEVMESH_PROXY_URL or mesh=).
"""

from __future__ import annotations

from fastapi import FastAPI, Request

from devmesh.asgi import DevmeshMiddleware

api = FastAPI(title="api")


@api.get("/items")
def list_items() -> dict[str, object]:
    return {"service": "api", "items": ["teapot", "kettle"]}


admin = FastAPI(title="admin")


@admin.get("/")
def admin_home(request: Request) -> dict[str, object]:
    return {"service": "admin", "host": request.state.devmesh.host}


tenants = FastAPI(title="tenants")


@tenants.get("/")
def tenant_home(request: Request) -> dict[str, object]:
    # For acme.tenant.localhost the wildcard part is "acme".
    return {"service": "tenants", "tenant": request.state.devmesh.wildcard}


app = FastAPI(title="web")


@app.get("/")
def home(request: Request) -> dict[str, object]:
    return {"service": "web", "subdomain": request.state.devmesh.subdomain}


app.add_middleware(
    DevmeshMiddleware,
    hosts={"api": api, "admin": admin, "*.tenant": tenants},
    version="1.0.0",
)
