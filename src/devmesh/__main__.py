from devmesh.cli.main import run

run()
