"""Minimal WSGI app (no framework), for gunicorn."""


def app(environ, start_response):
    body = b"wsgi\n"
    start_response(
        "200 OK",
        [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
    )
    return [body]


application = app
