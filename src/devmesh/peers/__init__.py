"""Peers (DESIGN §1, §5): agents that offer their services to each other over the mesh port."""
