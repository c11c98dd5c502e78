"""The agent: one process per project that holds the supervisor, health checks, the admin API and the proxy."""
