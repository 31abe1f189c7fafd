"""Run once before a Prefect server of several processes starts (python-scaled's
init_command): what each API process would otherwise do at its own start, racing the others on
a fresh database: migrate the schema and register the block types.

Run as `python -m bench.servers.prefect_init` in the server's environment (its database
settings); it calls the server's own functions, as its start does (prefect.server.api.server's
lifespan), and exits 0 once both are done.
"""

from __future__ import annotations

import asyncio


async def prepare_database() -> None:
    """Migrate the database to the installed Prefect's schema and register its block types."""
    from prefect.server.database import provide_database_interface
    from prefect.server.models.block_registration import run_block_auto_registration

    db = provide_database_interface()
    await db.create_db()
    async with await db.session() as session:  # the registration begins its transactions
        await run_block_auto_registration(session=session)


if __name__ == "__main__":
    asyncio.run(prepare_database())
