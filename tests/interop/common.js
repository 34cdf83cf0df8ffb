'use strict';
// Shared by client.js and server.js: loads interop.proto the same way on both sides.
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

// The error both servers return for Add with a < 0: non-ASCII and '%' test grpc-message percent-encoding.
const INTEROP_ERROR = 'négatif: «a» < 0 — 100% refusé ✓';

function loadEcho() {
  const definition = protoLoader.loadSync(path.join(__dirname, 'interop.proto'), {
    keepCase: false,
    longs: Number,
    defaults: true,
  });
  return grpc.loadPackageDefinition(definition).interop.v1.Echo;
}

module.exports = { grpc, loadEcho, INTEROP_ERROR };
