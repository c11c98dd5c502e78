"""The example's views: they read what the devmesh middleware put in the WSGI environ."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse


def home(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"service": "web", "subdomain": request.META.get("devmesh.subdomain")})


def list_items(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"service": "api", "items": ["teapot", "kettle"]})


def tenant_home(request: HttpRequest) -> JsonResponse:
    # For acme.tenant.localhost the wildcard part is "acme".
    return JsonResponse({"service": "tenants", "tenant": request.META["devmesh.wildcard"]})
