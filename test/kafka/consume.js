#!/usr/bin/env node
/* Reads a Kafka topic back with kafkajs (no librdkafka), for the tests.
 *
 *   node test/kafka/consume.js --brokers HOST:PORT[,...] --topic T --count N
 *        [--timeout-ms 30000] [--idle-ms MS] [--latency STREAM]
 *
 * Consumes the topic from the beginning, in a consumer group of its own,
 * until N messages arrived or the timeout passed, and writes one JSON line
 * per message to standard output, in arrival order:
 *   {"partition", "offset", "key", "value", "headers": {name: value}}
 * (key, value and header values as UTF-8 text; null if absent).  Exits 0
 * with N messages, 1 with fewer.
 *
 * With --idle-ms it also stops when no message came for that long after the
 * first.  With --latency STREAM (for the benchmarks) it reads only new messages,
 * writes "ready" to standard error once it has joined its group, takes the
 * messages of that stream (header "stream"), and writes one JSON line at the
 * end instead: {"count","p50","p95","p99","max"}, milliseconds from the
 * commit (field 5 of a DataHub record's data, or commitTime) to receipt.
 * Dependencies: `npm ci` in test/.
 */
'use strict';
const { Kafka, logLevel } = require('kafkajs');

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
if (!args.brokers || !args.topic || !args.count) {
  process.stderr.write('usage: node consume.js --brokers B --topic T --count N [--timeout-ms M]\n');
  process.exit(2);
}
const want = Number(args.count);
const timeoutMs = Number(args['timeout-ms'] || 30000);
const text = (b) => (b === null || b === undefined ? null : b.toString('utf8'));

async function main() {
  const kafka = new Kafka({ clientId: 'event-bridge-test', brokers: args.brokers.split(','),
                            logLevel: logLevel.ERROR, retry: { retries: 10 } });
  // Fetches return within 20 ms: the latency measured is event_bridge's, not the wait of a fetch.
  const consumer = kafka.consumer({ groupId: `event-bridge-test-${process.pid}-${Date.now()}`,
                                    maxWaitTimeInMs: 20 });
  let got = 0;
  let done;
  const finished = new Promise((resolve) => { done = resolve; });
  const latencies = [];
  let idle = null;
  consumer.on(consumer.events.GROUP_JOIN, () => process.stderr.write('ready\n'));
  await consumer.connect();
  await consumer.subscribe({ topic: args.topic, fromBeginning: !args.latency });
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      const headers = {};
      for (const [k, v] of Object.entries(message.headers || {})) headers[k] = text(v);
      if (args.latency) {
        if (headers.stream !== args.latency) return;
        const value = JSON.parse(text(message.value));
        const commit = value.commitTime !== undefined ? value.commitTime : Number(JSON.parse(value.data)[5]);
        latencies.push(Date.now() - commit);
      } else {
        process.stdout.write(JSON.stringify({ partition, offset: message.offset, key: text(message.key),
                                              value: text(message.value), headers }) + '\n');
      }
      if (args['idle-ms']) {
        clearTimeout(idle);
        idle = setTimeout(done, Number(args['idle-ms']));
      }
      if (++got >= want) done();
    },
  });
  const timer = setTimeout(done, timeoutMs);
  await finished;
  clearTimeout(timer);
  clearTimeout(idle);
  await consumer.disconnect();
  if (args.latency) {
    latencies.sort((a, b) => a - b);
    const at = (q) => latencies[Math.max(0, Math.ceil(latencies.length * q) - 1)];
    process.stdout.write(JSON.stringify({ count: latencies.length, p50: at(0.5), p95: at(0.95),
                                          p99: at(0.99), max: latencies[latencies.length - 1] }) + '\n');
  }
  process.exit(got >= want ? 0 : 1);
}
main().catch((e) => { process.stderr.write(`consume: ${e.message}\n`); process.exit(1); });
