"""Alembic environment: the hub passes its own connection (Database.migrate); no alembic.ini."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from devmesh.hub.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    # `alembic revision --autogenerate` during development: DEVMESH_HUB_DB names the database.
    from devmesh.hub.database import default_url, normalize_url

    engine = create_engine(normalize_url(default_url()))
    with engine.begin() as own:
        context.configure(connection=own, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
