"""Front ends of a domain: HTTP API, PG wire, auth, audit, router, console."""
