"""Editor integration: the files devmesh writes for editors (`devmesh vscode`: .vscode/tasks.json)."""
