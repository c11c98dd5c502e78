"""The agent's own error: it cannot start, and says why."""

from __future__ import annotations


class AgentError(Exception):
    """The agent cannot start; the message says why and what to do."""
