"""The data plane (DESIGN §1): an HTTP/1.1 reverse proxy on asyncio Protocols, httptools and uvloop."""
