'use strict';
// A standard gRPC server (@grpc/grpc-js) for the interop test: binds 127.0.0.1 on a free port, prints
// "LISTENING <port>" on stdout, and serves until it is killed.
const { grpc, loadEcho, INTEROP_ERROR } = require('./common');

const Echo = loadEcho();
const server = new grpc.Server();
server.addService(Echo.service, {
  Add(call, callback) {
    const { a, b, tag } = call.request;
    if (a < 0) {
      callback({ code: grpc.status.INVALID_ARGUMENT, details: INTEROP_ERROR });
      return;
    }
    callback(null, { sum: a + b, tag, server: 'node' });
  },
  Chat(call) {
    call.on('data', (m) => {
      call.write({ seq: m.seq, text: 'ack ' + m.text, payload: Buffer.from(m.payload).reverse() });
    });
    call.on('end', () => call.end());
    call.on('error', () => {});
  },
});

server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) {
    console.error('bind failed: ' + err.message);
    process.exit(1);
  }
  console.log('LISTENING ' + port);
});

process.on('SIGTERM', () => server.tryShutdown(() => process.exit(0)));
