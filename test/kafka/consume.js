#!/usr/bin/env node
/* Reads a Kafka topic back with kafkajs (no librdkafka), for the tests.
 *
 *   node test/kafka/consume.js --brokers HOST:PORT[,...] --topic T --count N
 *        [--timeout-ms 30000]
 *
 * Consumes the topic from the beginning, in a consumer group of its own,
 * until N messages arrived or the timeout passed, and writes one JSON line
 * per message to standard output, in arrival order:
 *   {"partition", "offset", "key", "value", "headers": {name: value}}
 * (key, value and header values as UTF-8 text; null if absent).  Exits 0
 * with N messages, 1 with fewer.  Dependencies: `npm ci` in test/.
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
  const consumer = kafka.consumer({ groupId: `event-bridge-test-${process.pid}-${Date.now()}` });
  let got = 0;
  let done;
  const finished = new Promise((resolve) => { done = resolve; });
  await consumer.connect();
  await consumer.subscribe({ topic: args.topic, fromBeginning: true });
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      const headers = {};
      for (const [k, v] of Object.entries(message.headers || {})) headers[k] = text(v);
      process.stdout.write(JSON.stringify({ partition, offset: message.offset, key: text(message.key),
                                            value: text(message.value), headers }) + '\n');
      if (++got >= want) done();
    },
  });
  const timer = setTimeout(done, timeoutMs);
  await finished;
  clearTimeout(timer);
  await consumer.disconnect();
  process.exit(got >= want ? 0 : 1);
}
main().catch((e) => { process.stderr.write(`consume: ${e.message}\n`); process.exit(1); });
