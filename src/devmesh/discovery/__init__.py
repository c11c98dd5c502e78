"""Services devmesh did not start, followed live: Docker containers with published ports, a Kubernetes
cluster's Services (each behind a port-forward on this machine). Each source reports the whole set it
sees now; the agent's `DiscoveryFeeds` turns the differences into registrations."""
