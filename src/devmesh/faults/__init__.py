"""Fault injection: policies, the decision for a request, and the bandwidth throttle."""
