// Shared by the k6 scripts of benches/k6 (README there): options from the environment.
//
//   RAGD_ADDR   host:port of the service (required)
//   RATE        arrivals per second of the open-loop (constant-arrival-rate) scenario (default 10)
//   DURATION    how long it runs, k6 syntax (default "5s")
//   VUS         virtual users pre-allocated for the arrivals (default 8)
import { check } from 'k6';
import grpc from 'k6/net/grpc';

export function addr() {
  const a = __ENV.RAGD_ADDR;
  if (!a) {
    throw new Error('set RAGD_ADDR=host:port of the service');
  }
  return a;
}

// An open-loop scenario: arrivals at RATE/s whatever the latency (k6 counts the arrivals it could
// not start as dropped_iterations), and thresholds that fail the run on any failed check.
export function openLoop(extraThresholds) {
  const rate = parseInt(__ENV.RATE || '10', 10);
  const vus = parseInt(__ENV.VUS || '8', 10);
  return {
    scenarios: {
      open: {
        executor: 'constant-arrival-rate',
        rate: rate,
        timeUnit: '1s',
        duration: __ENV.DURATION || '5s',
        preAllocatedVUs: vus,
        maxVUs: vus,
      },
    },
    thresholds: Object.assign({ checks: ['rate==1'] }, extraThresholds || {}),
  };
}

// One connection per virtual user, opened on its first iteration, with server reflection (no
// .proto files needed).
export function connected(client) {
  if (__ITER === 0) {
    client.connect(addr(), { plaintext: true, reflect: true, timeout: '10s' });
  }
  return client;
}

export function ok(res, name) {
  return check(res, { [`${name}: status OK`]: (r) => r && r.status === grpc.StatusOK });
}
