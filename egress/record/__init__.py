"""Attempt records: the schema (`schema`), aggregation of repeats (`aggregate`), the disk spool (`spool`) and the
Redis store (`store`, the only module that imports redis). See docs/records.md."""
