"""Users' own database connections in the query service: sealing, the SSRF guard, opening, pools, and the NATS handlers."""
