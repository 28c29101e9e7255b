#!/usr/bin/env node
// Feed an MLink-stream pipeline from Node and read its results, with no Python code.
//
//   node mlink-client.mjs --broker HOST:PORT produce --format image --topic cams \
//        --stream cam-1 --count 20 a.jpg b.jpg
//   node mlink-client.mjs --broker HOST:PORT results --topic mlink.results --expect cam-1:0,cam-1:1
//   node mlink-client.mjs --broker HOST:PORT run --format frame --topic mlink.frames \
//        --results mlink.results --stream cam-1 --count 20 --timeout 120 a.jpg b.png
//
// produce: sends --count frames (cycling through the image files) keyed by --stream, the camera
//   id. --format image sends each JPEG/PNG file as the record value (a camera topic; the
//   pipeline's source must say `format: image`); --format frame wraps it in our msgpack Frame
//   envelope. Prints one JSON line {"produced": [frame ids]}.
// results: reads the results topic from the beginning and prints one JSON line per FrameResult
//   of an expected frame id (first copy only: delivery is at least once), then exits 0; exits 2
//   when --timeout seconds pass first.
// run: produce, then wait for the results of exactly those frames.
//
// Frame ids of raw images follow docs/wire-format.md: "<topic>:<partition>:<offset>", or
// "<stream>:<seq>" with --seq-header (which sends the mlink.seq header).

import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import kafkajs from "kafkajs";
import { decodeRecord, encodeFrame, sniffImage, summarizeResult } from "./mlink-wire.mjs";

const { Kafka, logLevel, Partitioners } = kafkajs;

const USAGE = "usage: mlink-client.mjs --broker HOST:PORT (produce|results|run) [options] [FILES]";

function fail(message) {
  process.stderr.write(`mlink-client: ${message}\n`);
  process.exit(1);
}

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    broker: { type: "string" },
    format: { type: "string", default: "frame" },
    topic: { type: "string" },
    results: { type: "string" },
    stream: { type: "string", default: "node-cam" },
    count: { type: "string", default: "10" },
    "first-seq": { type: "string", default: "0" },
    "seq-header": { type: "boolean", default: false },
    expect: { type: "string" },
    timeout: { type: "string", default: "120" },
  },
});
const [command, ...files] = positionals;
if (!opts.broker || !["produce", "results", "run"].includes(command)) fail(USAGE);

// Tansu (the embedded broker) and kafkajs: topics are created beforehand, never on first use,
// and a 10 s session timeout rides out the broker's slower group rebalances.
const kafka = new Kafka({
  clientId: "mlink-node-client",
  brokers: opts.broker.split(","),
  logLevel: logLevel.WARN,
  logCreator: () => ({ namespace, log }) =>
    process.stderr.write(`kafkajs ${namespace}: ${log.message}\n`),
  retry: { retries: 8 },
});

async function produce() {
  if (!opts.topic) fail("produce needs --topic");
  if (!["image", "frame"].includes(opts.format)) fail("--format is image or frame");
  if (files.length === 0) fail("give at least one JPEG or PNG file to send");
  const images = files.map((path) => {
    const bytes = readFileSync(path);
    if (!sniffImage(bytes)) fail(`${path} is neither a JPEG nor a PNG file`);
    return bytes;
  });
  const producer = kafka.producer({
    allowAutoTopicCreation: false,
    createPartitioner: Partitioners.DefaultPartitioner, // Java's murmur2, like our producers
  });
  await producer.connect();
  const ids = [];
  try {
    const count = Number(opts.count);
    const first = Number(opts["first-seq"]);
    for (let i = 0; i < count; i++) {
      const seq = first + i;
      const image = images[i % images.length];
      const message = { key: opts.stream, timestamp: String(Date.now()) };
      if (opts.format === "frame") {
        message.value = Buffer.from(encodeFrame({ streamId: opts.stream, seq, image }));
      } else {
        message.value = image;
        if (opts["seq-header"]) message.headers = { "mlink.seq": String(seq) };
      }
      const [meta] = await producer.send({ topic: opts.topic, acks: -1, messages: [message] });
      const rawId = `${opts.topic}:${meta.partition}:${meta.baseOffset}`;
      const byConvention = opts.format === "frame" || opts["seq-header"];
      ids.push(byConvention ? `${opts.stream}:${seq}` : rawId);
    }
  } finally {
    await producer.disconnect();
  }
  return ids;
}

async function readResults(topic, expected) {
  const consumer = kafka.consumer({
    groupId: `mlink-node-${process.pid}-${Date.now()}`,
    sessionTimeout: 10_000,
    rebalanceTimeout: 10_000,
    heartbeatInterval: 3_000,
    maxWaitTimeInMs: 500,
    allowAutoTopicCreation: false,
  });
  const seen = new Set();
  let done;
  const allSeen = new Promise((resolve) => (done = resolve));
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  await consumer.run({
    eachMessage: async ({ message }) => {
      let result;
      try {
        result = decodeRecord(message.value, "frame_result");
      } catch (error) {
        process.stderr.write(`skipping an undecodable record: ${error.message}\n`);
        return;
      }
      if (!expected.has(result.frame_id) || seen.has(result.frame_id)) return;
      seen.add(result.frame_id);
      process.stdout.write(`${JSON.stringify(summarizeResult(result))}\n`);
      if (seen.size === expected.size) done(true);
    },
  });
  const timer = setTimeout(() => done(false), Number(opts.timeout) * 1000);
  const complete = await allSeen;
  clearTimeout(timer);
  await consumer.disconnect();
  if (!complete) {
    const missing = [...expected].filter((id) => !seen.has(id));
    process.stderr.write(`timed out without results for ${missing.length} frames: ${missing.slice(0, 10)}\n`);
  }
  return complete;
}

async function main() {
  if (command === "produce") {
    process.stdout.write(`${JSON.stringify({ produced: await produce() })}\n`);
    return 0;
  }
  if (command === "results") {
    if (!opts.topic || !opts.expect) fail("results needs --topic and --expect ID,ID,...");
    return (await readResults(opts.topic, new Set(opts.expect.split(",")))) ? 0 : 2;
  }
  if (!opts.results) fail("run needs --results (the pipeline's results topic)");
  const ids = await produce();
  process.stderr.write(`produced ${ids.length} frames to ${opts.topic}\n`);
  return (await readResults(opts.results, new Set(ids))) ? 0 : 2;
}

main().then(
  (code) => process.exit(code),
  (error) => fail(error.stack || String(error)),
);
