"""Attempt records: the schema (`schema`), aggregation of repeats (`aggregate`), the Redis layout (`layout`), the
disk spool (`spool`), the typed Redis facade (`redis_facade`, the only module that imports redis), delivery
(`delivery`), the store that puts them together (`store`), reads (`walk`, `query`), agent actions (`actions`,
`action_store`) and the components' counters (`counters`). See docs/records.md."""
