// k6 load test of the indexer: setup() creates a collection and ingests a few documents, then
// Search (text query, HNSW, k 3) in an open loop; teardown() drops the collection unless KEEP=1.
//   k6 run -e RAGD_ADDR=127.0.0.1:50052 -e RATE=20 -e DURATION=30s benches/k6/indexer.js
// COLLECTION names it (default k6-<time>); the indexer needs its embedder running.
import { check } from 'k6';
import grpc from 'k6/net/grpc';
import { addr, connected, ok, openLoop } from './common.js';

export const options = openLoop({ grpc_req_duration: ['p(99)<10000'] });
const client = new grpc.Client();
const DOCS = [
  ['paris', 'Paris is the capital and largest city of France.'],
  ['berlin', 'Berlin is the capital of Germany and its largest city.'],
  ['rome', 'Rome is the capital city of Italy.'],
  ['madrid', 'Madrid is the capital and most populous city of Spain.'],
  ['lisbon', 'Lisbon is the capital and largest city of Portugal.'],
];
const QUESTIONS = ['capital of France', 'city in Germany', 'Italian capital', 'Spain', 'Portugal'];

export function setup() {
  const collection = __ENV.COLLECTION || `k6-${Date.now()}`;
  const c = new grpc.Client();
  c.connect(addr(), { plaintext: true, reflect: true, timeout: '10s' });
  const created = c.invoke('ragd.v1.Indexer/CreateCollection', { name: collection });
  if (created.status !== grpc.StatusOK) {
    throw new Error(`CreateCollection ${collection}: ${JSON.stringify(created.error)}`);
  }
  const up = c.invoke('ragd.v1.Indexer/UpsertBatch', {
    collection: collection,
    documents: DOCS.map(([id, text]) => ({ id: id, text: text })),
  });
  if (up.status !== grpc.StatusOK || up.message.documents !== DOCS.length) {
    throw new Error(`UpsertBatch: ${JSON.stringify(up.error || up.message)}`);
  }
  c.close();
  return { collection: collection };
}

export default function (data) {
  const i = __ITER % QUESTIONS.length;
  const res = connected(client).invoke('ragd.v1.Indexer/Search', {
    collection: data.collection,
    queries: [{ text: QUESTIONS[i] }],
    k: 3,
  });
  if (ok(res, 'Search')) {
    check(res.message, {
      'Search: the expected document first': (m) => m.results[0].hits[0].docId === DOCS[i][0],
    });
  }
}

export function teardown(data) {
  if (__ENV.KEEP === '1') {
    return;
  }
  const c = new grpc.Client();
  c.connect(addr(), { plaintext: true, reflect: true, timeout: '10s' });
  c.invoke('ragd.v1.Indexer/DropCollection', { name: data.collection });
  c.close();
}
