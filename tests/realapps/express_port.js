// Express app listening on $PORT (default 3000), as its users usually write it.
const express = require("express");

const app = express();
let server;

app.get("/", (req, res) => {
  res.type("text/plain").send(`express port=${server.address().port}\n`);
});

server = app.listen(process.env.PORT || 3000, () => {
  console.log(`express listening on port ${server.address().port}`);
});
