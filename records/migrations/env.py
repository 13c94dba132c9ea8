"""Alembic environment: migrations run on the engine handed over by ``records.db.upgrade``."""

from alembic import context

from records.schema import metadata

config = context.config
engine = config.attributes.get("engine")
if engine is None:  # `alembic` run by hand: take the URL from the config
    from sqlalchemy import create_engine

    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite:///var/yilian.db")

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    context.run_migrations()
