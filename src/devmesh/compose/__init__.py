"""docker compose projects under devmesh: `devmesh compose import` and `devmesh compose up`.

`mapping` reads a compose file into devmesh terms, `services` turns that into `[services.NAME]` tables,
`engine` finds the compose implementation, `serve` runs one compose service in the foreground (what each
imported service's command runs) and `session` runs the agent over a compose file's services.
"""
