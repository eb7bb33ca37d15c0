// k6 load test of the embedder: Embed of 8 short texts per call, open loop (benches/k6/README.md).
//   k6 run -e RAGD_ADDR=127.0.0.1:50051 -e RATE=20 -e DURATION=30s benches/k6/embedder.js
import { check } from 'k6';
import grpc from 'k6/net/grpc';
import { connected, ok, openLoop } from './common.js';

export const options = openLoop({ grpc_req_duration: ['p(99)<10000'] });
const client = new grpc.Client();
const TEXTS = [
  'The quick brown fox jumps over the lazy dog.',
  'Paris is the capital of France.',
  'Vector search finds the nearest neighbours of a query.',
  'A language model writes the answer from retrieved passages.',
  'Rust has no garbage collector.',
  'The embedder batches requests dynamically.',
  'k6 is a load-testing tool.',
  'Every bad input gets a clear status.',
];

export default function () {
  const res = connected(client).invoke('ragd.v1.Embedder/Embed', { texts: TEXTS });
  if (ok(res, 'Embed')) {
    const m = res.message;
    check(m, {
      'Embed: one vector per text': (m) => m.embeddings.length === TEXTS.length,
      'Embed: vectors of the model dimension': (m) =>
        m.dim > 0 && m.embeddings.every((e) => e.values.length === m.dim),
    });
  }
}
