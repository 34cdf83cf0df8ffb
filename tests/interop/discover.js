'use strict';
// A stock gRPC client discovering a blockrepl daemon it has no .proto files for: `node discover.js TARGET`
// (TARGET as grpc-js takes it, e.g. unix:///run/blockrepl/admin.sock or 127.0.0.1:PORT) lists the services
// through server reflection (grpc.reflection.v1alpha), fetches the descriptors of blockrepl.v1.Admin and
// grpc.health.v1.Health from the daemon, builds clients from them and calls Health/Check and Admin/Status.
// Prints one line "RESULT <json>" and exits 0 (1 on a failure).
const grpc = require('@grpc/grpc-js');
const { GrpcReflection } = require('grpc-js-reflection-client');

const target = process.argv[2];
const credentials = grpc.credentials.createInsecure();
const deadline = () => ({ deadline: Date.now() + 20000 });

function call(client, method, request) {
  return new Promise((resolve) => {
    client[method](request, deadline(), (err, reply) => {
      resolve(err ? { code: err.code, details: err.details } : { code: 0, reply });
    });
  });
}

async function clientFor(reflection, symbol) {
  const descriptor = await reflection.getDescriptorBySymbol(symbol, deadline());
  const pkg = descriptor.getPackageObject({ longs: String, enums: String, defaults: true });
  const Service = symbol.split('.').reduce((o, part) => o[part], pkg);
  return new Service(target, credentials);
}

(async () => {
  const reflection = new GrpcReflection(target, credentials);
  const services = await reflection.listServices('*', deadline());
  const health = await clientFor(reflection, 'grpc.health.v1.Health');
  const admin = await clientFor(reflection, 'blockrepl.v1.Admin');
  const check = await call(health, 'Check', { service: '' });
  const status = await call(admin, 'Status', { volume: '' });
  console.log('RESULT ' + JSON.stringify({ services, check, status }));
  health.close();
  admin.close();
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
