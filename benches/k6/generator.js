// k6 load test of the generator: Ask (server-streamed) in an open loop against a collection the
// indexer already holds; checks the stream's shape (retrieval, answer pieces, done with
// citations) and records the time to the first answer piece.
//   k6 run -e RAGD_ADDR=127.0.0.1:50053 -e COLLECTION=docs -e RATE=1 benches/k6/generator.js
// QUESTION and MAX_TOKENS (default 16) shape each call.
import { check } from 'k6';
import grpc from 'k6/net/grpc';
import { Rate, Trend } from 'k6/metrics';
import { connected, openLoop } from './common.js';

export const options = openLoop({ ask_complete: ['rate==1'] });
const client = new grpc.Client();
const firstToken = new Trend('ask_time_to_first_delta', true);
const complete = new Rate('ask_complete');

export default function () {
  const collection = __ENV.COLLECTION;
  if (!collection) {
    throw new Error('set COLLECTION to a collection of the indexer');
  }
  const started = Date.now();
  let retrieval = null;
  let deltas = 0;
  let done = null;
  let failed = null;
  const stream = new grpc.Stream(connected(client), 'ragd.v1.Generator/Ask');
  stream.on('data', (m) => {
    if (m.retrieval) {
      retrieval = m.retrieval;
    } else if (m.delta !== undefined && m.delta !== null && m.delta !== '') {
      if (deltas === 0) {
        firstToken.add(Date.now() - started);
      }
      deltas += 1;
    } else if (m.done) {
      done = m.done;
    }
  });
  stream.on('error', (e) => {
    failed = e;
  });
  stream.on('end', () => {
    const good = check(null, {
      'Ask: no error': () => failed === null,
      'Ask: retrieval first': () => retrieval !== null && retrieval.passages.length > 0,
      'Ask: answer pieces': () => deltas > 0,
      'Ask: done with citations': () => done !== null && done.citations.length > 0,
    });
    complete.add(good);
  });
  stream.write({
    question: __ENV.QUESTION || 'What is the capital of France?',
    collection: collection,
    k: 2,
    sampling: { maxTokens: parseInt(__ENV.MAX_TOKENS || '16', 10), temperature: 0 },
  });
  stream.end();
}
