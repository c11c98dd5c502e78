"""Picks the URLconf for the host the devmesh middleware matched: one Django project, several hosts."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

# `hosts=` key (see wsgi.py) → the URLconf that host uses; other hosts keep ROOT_URLCONF.
URLCONF_BY_PATTERN = {"api": "mysite.api_urls", "*.tenant": "mysite.tenant_urls"}


class HostUrlconfMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        urlconf = URLCONF_BY_PATTERN.get(request.META.get("devmesh.pattern") or "")
        if urlconf is not None:
            request.urlconf = urlconf
        return self.get_response(request)
