"""The framework examples (examples/frameworks) through their frameworks' own test clients: host
routing, wildcards, the health endpoint, fall-through to the main app, lifespan and WebSocket."""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from devmesh.config import load_config

with warnings.catch_warnings():
    # Starlette asks for httpx2 over httpx when its test client is imported; either works here.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

FRAMEWORKS = Path(__file__).resolve().parents[2] / "examples" / "frameworks"


@pytest.fixture(autouse=True)
def outside_devmesh(monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples read DEVMESH_* at import: run them as a developer would outside a mesh."""
    for key in list(os.environ):
        if key.startswith("DEVMESH_"):
            monkeypatch.delenv(key)


def load_example(folder: str, filename: str = "app.py") -> ModuleType:
    path = FRAMEWORKS / folder / filename
    spec = importlib.util.spec_from_file_location(f"devmesh_example_{folder}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("folder", ["fastapi_app", "starlette_app", "flask_app", "django_project"])
def test_each_example_has_a_devmesh_toml_that_loads_and_a_readme_entry(folder: str) -> None:
    loaded = load_config(FRAMEWORKS / folder / "devmesh.toml")
    web = loaded.config.services["web"]
    assert isinstance(web.command, str) and "$PORT" in web.command
    assert web.health is not None and web.health.http == "/_devmesh/health"
    assert f"{folder}/" in (FRAMEWORKS / "README.md").read_text(encoding="utf-8")


def test_fastapi_example_routes_by_host() -> None:
    example = load_example("fastapi_app")
    with TestClient(example.app) as client:
        assert client.get("/items", headers={"host": "api.localhost:8000"}).json() == {
            "service": "api",
            "items": ["teapot", "kettle"],
        }
        assert client.get("/", headers={"host": "admin.localhost"}).json() == {
            "service": "admin",
            "host": "admin.localhost",
        }
        assert client.get("/", headers={"host": "acme.tenant.localhost"}).json() == {
            "service": "tenants",
            "tenant": "acme",
        }
        # Not mounted, and no mesh to forward to: the main app answers.
        assert client.get("/", headers={"host": "files.localhost"}).json() == {
            "service": "web",
            "subdomain": "files",
        }
        assert client.get("/items", headers={"host": "web.localhost"}).status_code == 404
        health = client.get("/_devmesh/health", headers={"host": "acme.tenant.localhost"})
        assert health.status_code == 200
        assert (health.json()["status"], health.json()["version"]) == ("ok", "1.0.0")
        routes = client.get("/_devmesh/routes").json()
        assert [entry["host"] for entry in routes["hosts"]] == [
            "api.localhost",
            "admin.localhost",
            "*.tenant.localhost",
        ]


def test_starlette_example_runs_the_mounted_apps_lifespan_and_routes_websockets() -> None:
    example = load_example("starlette_app")
    with TestClient(example.app) as client:
        # The api app's lifespan put the catalog in the state: it ran although api is only mounted.
        assert client.get("/items", headers={"host": "api.localhost"}).json() == {
            "service": "api",
            "items": ["teapot", "kettle"],
        }
        with client.websocket_connect("/ws", headers={"host": "live.localhost"}) as websocket:
            websocket.send_text("hello")
            assert websocket.receive_text() == "live.localhost echoes hello"
        assert client.get("/", headers={"host": "web.localhost"}).text == "web, for web.localhost\n"
        assert client.get("/_devmesh/health").json()["status"] == "ok"


def test_flask_example_routes_by_host() -> None:
    example = load_example("flask_app")
    client = example.app.test_client()
    assert client.get("/items", headers={"Host": "api.localhost:5000"}).json == {
        "service": "api",
        "items": ["teapot", "kettle"],
    }
    assert client.get("/", headers={"Host": "eu.acme.tenant.localhost"}).json == {
        "service": "tenants",
        "tenant": "eu.acme",
    }
    assert client.get("/", headers={"Host": "web.localhost"}).json == {"service": "web", "subdomain": "web"}
    health = client.get("/_devmesh/health", headers={"Host": "api.localhost"})
    assert (health.status_code, health.json["version"]) == (200, "1.0.0")


@pytest.fixture(scope="module")
def django_application() -> Iterator[object]:
    project = str(FRAMEWORKS / "django_project")
    sys.path.insert(0, project)
    os.environ["DJANGO_SETTINGS_MODULE"] = "mysite.settings"
    try:
        from mysite.wsgi import application  # type: ignore[import-not-found]

        yield application
    finally:
        sys.path.remove(project)
        os.environ.pop("DJANGO_SETTINGS_MODULE", None)


def test_django_example_routes_by_host(django_application: object) -> None:
    # Django's own test Client calls Django's handler directly, past any WSGI middleware; Werkzeug's
    # client drives the WSGI application a server would serve (mysite.wsgi.application).
    from werkzeug.test import Client

    client = Client(django_application)  # type: ignore[arg-type]
    assert client.get("/items", headers={"Host": "api.localhost"}).json == {
        "service": "api",
        "items": ["teapot", "kettle"],
    }
    assert client.get("/", headers={"Host": "acme.tenant.localhost"}).json == {
        "service": "tenants",
        "tenant": "acme",
    }
    assert client.get("/", headers={"Host": "web.localhost:8000"}).json == {
        "service": "web",
        "subdomain": "web",
    }
    assert client.get("/items", headers={"Host": "web.localhost"}).status_code == 404
    health = client.get("/_devmesh/health", headers={"Host": "api.localhost"})
    assert (health.status_code, health.json["status"]) == (200, "ok")


def test_django_views_alone_through_djangos_test_client(django_application: object) -> None:
    # Without the middleware nothing is matched: the root URLconf answers every host.
    from django.test import Client

    response = Client(HTTP_HOST="api.localhost").get("/")
    assert response.json() == {"service": "web", "subdomain": None}
