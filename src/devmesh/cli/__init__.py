"""The `devmesh` command line. Modules import their heavy dependencies inside the commands, so that
`devmesh --help` and `devmesh status` stay fast."""
