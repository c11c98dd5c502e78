"""`devmesh export`: the route table rendered for another proxy (nginx, Caddy, Envoy).

`model` builds the proxy-independent `RouteModel`; `nginx`, `caddy` and `envoy` are pure renderers of it.
"""
