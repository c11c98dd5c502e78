"""The hub: a central control plane for agents on different networks (DESIGN §6, docs/hub.md).

People log in (JWT) or use API keys; agents enrol with a one-time token and keep a WebSocket session.
The hub stores policies as immutable, hashed revisions, pushes them to the agents of a workspace and
records each agent's answer, and aggregates the workspace's catalogs so peers find each other. State
lives in one database (SQLite, or PostgreSQL shared by several replicas that fan out through
LISTEN/NOTIFY).
"""
