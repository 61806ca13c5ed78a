// Verify one compact JWS against a JWK set with the `jose` library, as a partner would.
// stdin: {"jwks": {"keys": [...]}, "jws": "..."}
// stdout: {"valid": true, "payload": <the signed JSON>, "kid": "..."} or {"valid": false, "error": "..."}
import { compactVerify, createLocalJWKSet } from "jose";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const { jwks, jws } = JSON.parse(input);
try {
  const { payload, protectedHeader } = await compactVerify(jws, createLocalJWKSet(jwks), {
    algorithms: ["EdDSA", "Ed25519"],
  });
  const signed = JSON.parse(new TextDecoder().decode(payload));
  console.log(JSON.stringify({ valid: true, payload: signed, kid: protectedHeader.kid }));
} catch (error) {
  console.log(JSON.stringify({ valid: false, error: String(error.code || error.name) }));
}
