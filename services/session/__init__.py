"""The session service: Flask-Session-compatible sessions in Redis, served over NATS."""
