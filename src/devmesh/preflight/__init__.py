"""The CI preflight behind `devmesh wait` and `devmesh check` (docs/ci.md), and the pytest plugin's start.

- `readiness`: what "ready" (running) and "healthy" mean for a service of the status document (pure);
- `wait`: `wait_for_mesh`, which follows the agent's events stream until the mesh is ready;
- `report` and `junit`: the results of `check`, one per testcase, and their JUnit XML (pure);
- `checks`: the checks of `check` in their order (config, ports, agent, health, smoke, versions),
  with `ports` and `smoke` for the two that probe the network;
- `agents`: starting an agent (`devmesh up --detach`) for `check` and the pytest plugin, and stopping it.

Nothing here is imported when the CLI loads: the commands in `devmesh.cli.ci` import it when they run.
"""
