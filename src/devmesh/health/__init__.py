"""Health checks: http, tcp and cmd probes, and the monitor that turns results into a health state."""
