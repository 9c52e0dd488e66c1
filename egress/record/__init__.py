"""Attempt records: the schema (`schema`), aggregation of repeats (`aggregate`), the Redis layout (`layout`), the
disk spool (`spool`), the typed Redis facade (`redis_facade`, the only module that imports redis), delivery
(`delivery`), the store that puts them together (`store`), reads (`walk`, `query`), agent actions (`actions`,
`action_store`) and the components' counters (`counters`). See docs/records.md."""

from typing import Final

REDIS_URL: Final = "redis://127.0.0.1:6379/0"
"""Where records are when no ``--redis-url`` says otherwise (the gateway, the API and the query CLI agree)."""
