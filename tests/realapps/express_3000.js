// Express app with a hard-coded port.
const express = require("express");

const app = express();
let server;

app.get("/", (req, res) => {
  res.type("text/plain").send(`express3000 port=${server.address().port}\n`);
});

server = app.listen(3000, () => {
  console.log(`express3000 listening on port ${server.address().port}`);
});
