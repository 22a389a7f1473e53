"""The station's HTTP service (FastAPI's "bigger applications" layout): `main.create_app` builds the app, puts what
the routes share on `app.state` (`state.AppState`) and includes one router per resource; the routes reach that state
through dependencies (`state.Served`), never through closed-over variables."""
