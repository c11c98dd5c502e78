"""What the mesh tells the developer and their tools: metrics, events, traces, topology."""
