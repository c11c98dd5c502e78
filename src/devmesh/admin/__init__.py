"""The admin API (DESIGN §5): loopback only, a token for every write, FastAPI on the agent's own loop."""
