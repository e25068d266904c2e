"""The query service: runs read-only SQL against configured sources and streams the rows over NATS."""
