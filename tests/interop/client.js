'use strict';
// A standard gRPC client (@grpc/grpc-js) for the interop test: `node client.js PORT [COUNT]` calls
// Add(2, 40), Add(-1, 0) (expects an error) and Chat with COUNT messages on 127.0.0.1:PORT, then prints
// one line "RESULT <json>" and exits 0 (1 on a transport failure).
const { grpc, loadEcho } = require('./common');

const port = process.argv[2];
const count = Number(process.argv[3] || 100);
const Echo = loadEcho();
const client = new Echo('127.0.0.1:' + port, grpc.credentials.createInsecure());
const deadline = () => Date.now() + 20000;

function add(a, b) {
  return new Promise((resolve) => {
    client.Add({ a, b, tag: 'node-client' }, { deadline: deadline() }, (err, reply) => {
      resolve(err ? { code: err.code, details: err.details } : { code: 0, reply });
    });
  });
}

function chat() {
  return new Promise((resolve) => {
    const call = client.Chat({ deadline: deadline() });
    const replies = [];
    let status = null;
    let ended = false;
    const done = () => {
      if (status !== null && ended) {
        resolve({ code: status.code, details: status.details, replies });
      }
    };
    call.on('data', (m) => replies.push({ seq: m.seq, text: m.text, payload: Buffer.from(m.payload).toString('hex') }));
    call.on('status', (s) => { status = s; done(); });
    call.on('end', () => { ended = true; done(); });
    call.on('error', (e) => { status = { code: e.code, details: e.details }; ended = true; done(); });
    for (let i = 1; i <= count; i++) {
      call.write({ seq: i, text: 'msg ' + i, payload: Buffer.from([i & 0xff, (i >> 8) & 0xff, 7]) });
    }
    call.end();
  });
}

(async () => {
  const ok = await add(2, 40);
  const refused = await add(-1, 0);
  const stream = await chat();
  console.log('RESULT ' + JSON.stringify({ ok, refused, stream }));
  client.close();
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
