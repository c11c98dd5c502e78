"""Routing (DESIGN §3): from a request's host and path to a service and an ordered list of endpoints."""
