"""The message contract: topics, schemas and the wire codec (see docs/messages.md)."""
