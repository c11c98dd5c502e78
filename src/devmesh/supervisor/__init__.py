"""The supervisor: spawns each service's command, restarts it by policy, and never leaves an orphan."""
