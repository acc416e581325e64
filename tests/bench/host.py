"""A child process for the memory benchmark: a minimal FastAPI host, with or without the agent.

`python -m tests.bench.host MODE [CONFIG]` serves on a free loopback port
until killed. MODE is `bare` (FastAPI + uvicorn), `agent` (the same with
`incident_fsm.lifespan(CONFIG)`), `db` (a host that already uses
SQLAlchemy/SQLModel and pydantic, as most FastAPI apps with a database do) or
`db+agent`. It prints `ready` once uvicorn has started.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI


def app_for(mode: str, config: str | None) -> FastAPI:
    lifespan: Any = None
    if mode.endswith("agent"):
        import incident_fsm

        lifespan = incident_fsm.lifespan(config)
    if mode.startswith("db"):
        # What a database-backed host has loaded before the agent arrives.
        import sqlalchemy
        import sqlmodel  # noqa: F401

        engine = sqlalchemy.create_engine("sqlite://")
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
        inner = lifespan

        @asynccontextmanager
        async def with_engine(app: FastAPI) -> AsyncIterator[None]:
            if inner is None:
                yield
            else:
                async with inner(app):
                    yield

        lifespan = with_engine
    app = FastAPI(lifespan=lifespan)

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def main(mode: str, config: str | None, port: int) -> None:
    server = uvicorn.Server(uvicorn.Config(app_for(mode, config), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    await task


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[3] if len(sys.argv) > 3 else None, int(sys.argv[2])))
