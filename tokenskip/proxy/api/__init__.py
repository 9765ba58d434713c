"""The gateway's HTTP face: app, edge, routes, OpenAPI, and the API translators."""
