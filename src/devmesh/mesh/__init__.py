"""The mesh state: one immutable snapshot of services and endpoints, swapped atomically."""
