// A gRPC-Web page script for txcmux's browser tests: the official client
// (npm grpc-web) calls a unary and a server-streaming method named in the
// page's query string, and writes what came back into the DOM as JSON.
//
// Query parameters (all optional but one of unary / stream):
//   unary=/pkg.Service/Method    the unary method's path
//   stream=/pkg.Service/Method   the server-streaming method's path
//   fields={"1":"text"}          the request's fields, JSON: field number to
//                                a string (a string field), an integer (a
//                                varint field) or true/false (a bool)
//   metadata={"x-a":"b"}         request metadata (headers), JSON
//   format=binary|text           application/grpc-web+proto (binary, the
//                                default) or application/grpc-web-text (base64)
//   host=http://host:port        where to call (default: this page's origin)
//
// The result, in <pre id="result"> once every call has ended:
//   {"unary": CALL, "stream": CALL} where CALL is
//   {"messages": [{"1": "..."}, ...], "metadata": {...}, "status":
//    {"code": 0, "details": "", "metadata": {...trailers}}, "error": null or
//    {"code": ..., "message": ..., "metadata": {...}}}
// Messages are decoded without a schema: each field number maps to its
// value (a string when its bytes are UTF-8, else {"base64": "..."}; a number
// for a varint), or to a list of values when it repeats.  Then
// document.body.dataset.done is set to "1".
//
// No protoc: the serializer and deserializer are written here with
// google-protobuf's BinaryWriter and BinaryReader.

import { BinaryReader, BinaryWriter } from "google-protobuf";
import { GrpcWebClientBase, MethodDescriptor, MethodType } from "grpc-web";

class Fields {
  constructor(values) {
    this.values = values || {};
  }
}

function serialize(request) {
  const writer = new BinaryWriter();
  for (const [key, value] of Object.entries(request.values)) {
    const number = Number(key);
    if (typeof value === "string") {
      writer.writeString(number, value);
    } else if (typeof value === "boolean") {
      writer.writeBool(number, value);
    } else if (Number.isInteger(value)) {
      writer.writeInt64(number, value);
    } else {
      throw new Error("field " + key + ": a string, an integer or a boolean");
    }
  }
  return writer.getResultBuffer();
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

function bytesValue(bytes) {
  try {
    return utf8.decode(bytes);
  } catch (error) {
    return { base64: btoa(String.fromCharCode(...bytes)) };
  }
}

function deserialize(bytes) {
  const reader = new BinaryReader(bytes);
  const values = {};
  while (reader.nextField()) {
    if (reader.isEndGroup()) {
      break;
    }
    const number = reader.getFieldNumber();
    let value;
    switch (reader.getWireType()) {
      case 0:
        value = reader.readInt64();
        break;
      case 2:
        value = bytesValue(reader.readBytes());
        break;
      default:
        reader.skipField();
        continue;
    }
    if (number in values) {
      values[number] = [].concat(values[number], [value]);
    } else {
      values[number] = value;
    }
  }
  return new Fields(values);
}

function descriptor(path, type) {
  return new MethodDescriptor(path, type, Fields, Fields, serialize, deserialize);
}

function call(client, base, path, type, request, metadata) {
  const seen = { messages: [], metadata: null, status: null, error: null };
  return new Promise((resolve) => {
    let ended = false;
    const end = () => {
      if (!ended) {
        ended = true;
        resolve(seen);
      }
    };
    const onData = (response) => seen.messages.push(response.values);
    let stream;
    if (type === MethodType.UNARY) {
      stream = client.rpcCall(base + path, request, metadata, descriptor(path, type),
        (error, response) => {
          if (error) {
            seen.error = { code: error.code, message: error.message,
                           metadata: error.metadata || {} };
          } else {
            onData(response);
          }
          // The status event may come after the callback: wait a turn.
          setTimeout(end, 0);
        });
    } else {
      stream = client.serverStreaming(base + path, request, metadata,
        descriptor(path, type));
      stream.on("data", onData);
      stream.on("error", (error) => {
        seen.error = { code: error.code, message: error.message,
                       metadata: error.metadata || {} };
        end();
      });
      stream.on("end", end);
    }
    stream.on("metadata", (headers) => { seen.metadata = headers; });
    stream.on("status", (status) => {
      seen.status = { code: status.code, details: status.details,
                      metadata: status.metadata || {} };
    });
  });
}

async function main() {
  const query = new URLSearchParams(location.search);
  const format = query.get("format") || "binary";
  const base = query.get("host") || location.origin;
  const request = new Fields(JSON.parse(query.get("fields") || "{}"));
  const metadata = JSON.parse(query.get("metadata") || "{}");
  const client = new GrpcWebClientBase({ format });
  const result = { format };
  if (query.get("unary")) {
    result.unary = await call(client, base, query.get("unary"), MethodType.UNARY,
      request, metadata);
  }
  if (query.get("stream")) {
    result.stream = await call(client, base, query.get("stream"),
      MethodType.SERVER_STREAMING, request, metadata);
  }
  return result;
}

main()
  .catch((error) => ({ script_error: String(error && error.stack || error) }))
  .then((result) => {
    document.getElementById("result").textContent = JSON.stringify(result);
    document.body.dataset.done = "1";
  });
