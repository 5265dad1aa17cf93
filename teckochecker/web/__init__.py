"""The HTTP face: routes of the JSON API and health checks, the status page, and the uvicorn server run
inside the daemon's own event loop."""
