// Parse an AsyncAPI document with @asyncapi/parser, as a partner's tooling would.
// argv[2]: the document's path. stdout: {"diagnostics": [{severity, code, message, path}],
// "channels": [{id, address, parameters}], "securitySchemes": [...], "messages": N}
// severity: 0 error, 1 warning, 2 information, 3 hint (Spectral's DiagnosticSeverity).
import { readFile } from "node:fs/promises";
import { Parser } from "@asyncapi/parser";

const text = await readFile(process.argv[2], "utf8");
const parser = new Parser();
const { document, diagnostics } = await parser.parse(text);
const out = {
  diagnostics: diagnostics.map((d) => ({
    severity: d.severity,
    code: String(d.code),
    message: d.message,
    path: d.path.join("/"),
  })),
  channels: [],
  securitySchemes: [],
  messages: 0,
};
if (document) {
  out.channels = document.channels().all().map((c) => ({
    id: c.id(),
    address: c.address(),
    parameters: c.parameters().all().map((p) => p.id()),
  }));
  out.securitySchemes = document.components().securitySchemes().all().map((s) => ({
    id: s.id(),
    type: s.type(),
  }));
  out.messages = document.allMessages().all().length;
  out.keyed = document
    .allMessages()
    .all()
    .filter((m) => m.bindings().has("kafka") && m.bindings().get("kafka").value().key).length;
  out.withHeaders = document.allMessages().all().filter((m) => m.hasHeaders()).length;
}
console.log(JSON.stringify(out));
