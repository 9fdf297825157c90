// Validate Strimzi custom resources against Strimzi's CRD schemas as compiled into
// @kubernetes-models/strimzi-kafka-operator (generated from strimzi-crds-0.49.0.yaml).
// Usage: node validate-strimzi.mjs <node_modules dir> < docs.json   (a JSON array of resources)
// Prints one line per resource; exits 1 when any is invalid or of an unknown kind.
import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.argv[2];
const docs = JSON.parse(readFileSync(0, "utf8"));
const schemas = join(modules, "@kubernetes-models", "strimzi-kafka-operator", "_schemas");
let failed = 0;
for (const doc of docs) {
  const [group, version] = String(doc.apiVersion).split("/");
  const prefix = group.split(".").map((p) => p[0].toUpperCase() + p.slice(1)).join("");
  const file = join(schemas, `${prefix}${version[0].toUpperCase()}${version.slice(1)}${doc.kind}.js`);
  const name = `${doc.kind} ${doc.metadata?.name} (${doc.apiVersion})`;
  if (!existsSync(file)) {
    console.log(`${name} - no schema (${file})`);
    failed++;
    continue;
  }
  const { validate } = await import(pathToFileURL(file).href);
  if (validate(doc)) {
    console.log(`${name} - valid`);
  } else {
    failed++;
    for (const e of validate.errors) {
      console.log(`${name} - INVALID: ${e.instancePath || "/"} ${e.keyword} ${JSON.stringify(e.params)}`);
    }
  }
}
process.exit(failed ? 1 : 0);
