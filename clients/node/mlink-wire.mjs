// The MLink-stream wire format in JavaScript, with no Kafka in it (docs/wire-format.md).
//
// Every value on the pipeline's topics is one msgpack map tagged with `v` (schema version) and
// `type`; numpy arrays travel as msgpack extension type 42 whose payload is the msgpack array
// [dtype.str, shape, raw C-order bytes]. This module decodes those arrays into typed arrays,
// turns a FrameResult into plain JSON, and builds Frame envelopes for producers.

import { decode, encode, ExtensionCodec } from "@msgpack/msgpack";

export const SCHEMA_VERSION = 1;
export const ARRAY_EXT_CODE = 42;

// numpy kind + item size -> [DataView getter, element size, typed array constructor]
const ELEMENT = {
  f2: ["float16", 2, Float32Array],
  f4: ["getFloat32", 4, Float32Array],
  f8: ["getFloat64", 8, Float64Array],
  i1: ["getInt8", 1, Int8Array],
  i2: ["getInt16", 2, Int16Array],
  i4: ["getInt32", 4, Int32Array],
  i8: ["getBigInt64", 8, BigInt64Array],
  u1: ["getUint8", 1, Uint8Array],
  u2: ["getUint16", 2, Uint16Array],
  u4: ["getUint32", 4, Uint32Array],
  u8: ["getBigUint64", 8, BigUint64Array],
  b1: ["getUint8", 1, Uint8Array],
};

function float16(view, offset, little) {
  const bits = view.getUint16(offset, little);
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * 2 ** -14 * (fraction / 1024);
  if (exponent === 0x1f) return fraction ? NaN : sign * Infinity;
  return sign * 2 ** (exponent - 15) * (1 + fraction / 1024);
}

/** An ndarray: `{dtype, shape, data}` where `data` is a flat typed array in C order. */
export function decodeArray(payload) {
  const [dtype, shape, raw] = decode(payload);
  const order = dtype[0];
  const element = ELEMENT[dtype.slice(1)];
  if (!element || !"<>|=".includes(order)) {
    throw new Error(`unsupported array dtype ${JSON.stringify(dtype)}`);
  }
  const [getter, size, Typed] = element;
  const count = shape.reduce((a, b) => a * b, 1);
  if (raw.byteLength !== count * size) {
    throw new Error(`array of dtype ${dtype} and shape [${shape}] needs ${count * size} bytes, got ${raw.byteLength}`);
  }
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const little = order !== ">"; // '|' (one-byte items) and '=' (native: always little here)
  const data = new Typed(count);
  for (let i = 0; i < count; i++) {
    data[i] = getter === "float16" ? float16(view, i * size, little) : view[getter](i * size, little);
  }
  return { dtype, shape, data };
}

/** The array as nested JS lists (numbers; int64 as numbers when exact, else strings; bools). */
export function toNested({ dtype, shape, data }) {
  const bool = dtype.endsWith("b1");
  const scalar = (x) => {
    if (typeof x === "bigint") return Number.isSafeInteger(Number(x)) ? Number(x) : x.toString();
    return bool ? x !== 0 : x;
  };
  const build = (dim, offset) => {
    if (dim === shape.length) return scalar(data[offset]);
    const stride = shape.slice(dim + 1).reduce((a, b) => a * b, 1);
    return Array.from({ length: shape[dim] }, (_, i) => build(dim + 1, offset + i * stride));
  };
  return build(0, 0);
}

const codec = new ExtensionCodec();
codec.register({
  type: ARRAY_EXT_CODE,
  encode: () => null, // writers here never send arrays
  decode: (payload) => decodeArray(payload),
});

/** Decode one Kafka value into its record (a plain object), checking the schema tag. */
export function decodeRecord(value, expectedType) {
  const record = decode(value, { extensionCodec: codec });
  if (record === null || typeof record !== "object" || record.v !== SCHEMA_VERSION) {
    throw new Error(`not an MLink record of schema version ${SCHEMA_VERSION}`);
  }
  if (expectedType && record.type !== expectedType) {
    throw new Error(`expected a ${expectedType} record, got ${record.type}`);
  }
  return record;
}

/** A FrameResult as one JSON-able summary: per model status, provenance and output lists. */
export function summarizeResult(result) {
  const models = {};
  for (const r of result.results) {
    models[r.model] = {
      status: r.status,
      link_version: r.link_version ?? null,
      sources: r.sources ?? [],
      agreement: r.agreement ?? null,
      error: r.error ?? null,
      output: toNested(r.output),
    };
  }
  return {
    frame_id: result.frame_id,
    stream_id: result.stream_id,
    seq: result.seq,
    epoch: result.epoch,
    degraded: result.degraded,
    probe: result.probe ?? false,
    models,
  };
}

/** The image format announced by the magic bytes: "jpeg", "png" or null. */
export function sniffImage(bytes) {
  if (bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return "jpeg";
  const png = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (png.every((b, i) => bytes[i] === b)) return "png";
  return null;
}

/** A Frame envelope (msgpack bytes) holding one encoded JPEG or PNG image. */
export function encodeFrame({ streamId, seq, image, timestamp = Date.now() / 1000 }) {
  const encoding = sniffImage(image);
  if (!encoding) throw new Error("a frame's image must be JPEG or PNG bytes");
  return encode({
    v: SCHEMA_VERSION,
    type: "frame",
    stream_id: streamId,
    frame_id: `${streamId}:${seq}`,
    seq,
    timestamp,
    encoding,
    data: image, // a Uint8Array/Buffer: msgpack bin
  });
}
