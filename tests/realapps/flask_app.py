"""Flask app listening on $PORT (default 5000) via the built-in dev server."""
import os

from flask import Flask

app = Flask(__name__)


@app.route("/")
def index():
    return "flask\n", 200, {"Content-Type": "text/plain"}


if __name__ == "__main__":
    app.run(port=int(os.environ.get("PORT", 5000)))
