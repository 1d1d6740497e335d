"""The log wing: the SQLite file and everything written to it (schema, connection, the store
and its async twin, records, blobs, serialization, the JSON documents of a row)."""
