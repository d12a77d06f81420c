"""The domain's HTTP API (`/v1`, starlette): `server.http.app.create_app(state)`."""
