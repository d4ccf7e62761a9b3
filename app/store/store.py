"""The store facade: a read engine for queries in worker threads, and the single writer."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread
from sqlalchemy import Connection, text

from app.events.bus import EventBus
from app.store.db import make_engine
from app.store.writer import StoreWriter, WriteOp

T = TypeVar("T")


class Store:
    def __init__(self, database_url: str, bus: EventBus, *, batch_max: int = 500) -> None:
        self.url = database_url
        # Where the writer publishes committed events, and the scheduler live-only ones.
        self.bus = bus
        self.read_engine = make_engine(database_url)
        self.write_engine = make_engine(database_url, writer=True)
        self.writer = StoreWriter(self.write_engine, bus, batch_max=batch_max)

    async def start(self) -> None:
        await self.writer.start()

    async def close(self) -> None:
        await self.writer.close()
        self.read_engine.dispose()
        self.write_engine.dispose()

    async def write(self, op: WriteOp[T]) -> T:
        return await self.writer.run(op)

    async def read(self, fn: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self.read_engine.connect() as conn:
                return fn(conn)

        return await anyio.to_thread.run_sync(run)

    async def ping(self) -> bool:
        def probe(conn: Connection) -> bool:
            return conn.execute(text("SELECT 1")).scalar() == 1

        try:
            return await self.read(probe)
        except Exception:
            return False
