// One HTTP/2 session (Node's own http2 client) carrying REST requests and
// gRPC calls interleaved, as Go's and Java's shared transports do.
// Usage: node shared_session.js PORT; prints one JSON line with the results.
"use strict";
const http2 = require("http2");

const port = process.argv[2];
const session = http2.connect(`http://127.0.0.1:${port}`);
session.on("error", (error) => {
  console.log(JSON.stringify({ error: String(error) }));
  process.exit(1);
});

function frame(message) {
  const body = Buffer.from(message);
  const head = Buffer.alloc(5);
  head.writeUInt32BE(body.length, 1);
  return Buffer.concat([head, body]);
}

function messages(body) {
  const out = [];
  for (let at = 0; at + 5 <= body.length; ) {
    const size = body.readUInt32BE(at + 1);
    out.push(body.subarray(at + 5, at + 5 + size).toString());
    at += 5 + size;
  }
  return out;
}

function request(headers, body) {
  return new Promise((resolve, reject) => {
    const stream = session.request(headers);
    const chunks = [];
    let response = {};
    let trailers = {};
    stream.on("response", (h) => { response = h; });
    stream.on("trailers", (t) => { trailers = t; });
    stream.on("data", (chunk) => chunks.push(chunk));
    stream.on("end", () => resolve({ headers: response, trailers, body: Buffer.concat(chunks) }));
    stream.on("error", reject);
    if (body !== undefined) stream.end(body); else stream.end();
  });
}

function rest(path) {
  return request({ ":method": "GET", ":path": path }).then((r) => ({
    kind: "rest", status: r.headers[":status"], body: r.body.toString(),
  }));
}

function grpc(method, message) {
  return request({
    ":method": "POST",
    ":path": `/txcmux.test.Echo/${method}`,
    "content-type": "application/grpc",
    te: "trailers",
  }, frame(message)).then((r) => ({
    kind: "grpc",
    status: r.headers[":status"],
    grpcStatus: r.trailers["grpc-status"] ?? r.headers["grpc-status"],
    messages: messages(r.body),
  }));
}

async function main() {
  const first = await rest("/hello");
  const mixed = await Promise.all([
    grpc("Unary", "one"), rest("/hello"), grpc("ServerStream", "2 3"),
    grpc("Unary", "two"), rest("/hello"),
  ]);
  console.log(JSON.stringify({ results: [first, ...mixed] }));
  session.close();
}

main().catch((error) => {
  console.log(JSON.stringify({ error: String(error) }));
  process.exit(1);
});
