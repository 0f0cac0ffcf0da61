// A webhook receiver: verifies each POST with the Standard Webhooks library
// (the one receivers use) and appends what it got to a JSON-lines file.
//
//   node webhook_receiver.mjs PORT SECRET OUT_FILE
//
// Verified: 204 and {"id","type","data","verified":true}; a bad signature:
// 401 and {"verified":false,"error"}. Prints "listening" once it listens.
import { createServer } from 'node:http';
import { appendFileSync } from 'node:fs';
import { Webhook } from 'standardwebhooks';

const [port, secret, out] = process.argv.slice(2);
const wh = new Webhook(secret);
createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks).toString('utf8');
    try {
      const event = wh.verify(body, req.headers);
      appendFileSync(out, JSON.stringify({ id: req.headers['webhook-id'], type: event.type, data: event.data, verified: true }) + '\n');
      res.writeHead(204).end();
    } catch (e) {
      appendFileSync(out, JSON.stringify({ verified: false, error: String(e) }) + '\n');
      res.writeHead(401).end();
    }
  });
}).listen(Number(port), '127.0.0.1', () => console.log('listening'));
