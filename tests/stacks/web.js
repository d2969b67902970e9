// A web front end for `pb up`'s tests: during its own startup it calls the
// API at $API_URL, then serves what it got on $PORT.
const http = require('http');
const started = Date.now();
http.get(process.env.API_URL + '/from-web', res => {
  let body = '';
  res.on('data', d => (body += d));
  res.on('end', () => {
    console.log('web-got ' + JSON.stringify({ body, ms: Date.now() - started }));
    http
      .createServer((req, res) => res.end('web saw: ' + body))
      .listen(+process.env.PORT, '127.0.0.1', () => console.log('web-listening'));
  });
}).on('error', e => {
  console.log('web-failed ' + e.message);
  process.exit(1);
});
