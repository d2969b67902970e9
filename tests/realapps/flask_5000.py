"""Flask app with a hard-coded port."""
from flask import Flask

app = Flask(__name__)


@app.route("/")
def index():
    return "flask5000\n", 200, {"Content-Type": "text/plain"}


if __name__ == "__main__":
    app.run(port=5000)
