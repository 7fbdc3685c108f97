// Validates Prometheus Operator custom resources (a JSON list on stdin) against the operator's
// API schema, as packaged by @kubernetes-models/prometheus-operator (generated from the
// operator's Go API types, like its CRDs: types, required fields, enums; unknown fields are
// not reported). Exit 1 and one line per invalid object; 0 when all are valid.
//
//   node scripts/validate-crs.mjs NODE_PREFIX < objects.json
//
// NODE_PREFIX is where `npm install --prefix` put the package (scripts/setup.sh).
import { readFileSync } from "node:fs";
import { join } from "node:path";

const prefix = process.argv[2];
if (!prefix) {
  console.error("usage: validate-crs.mjs NODE_PREFIX < objects.json");
  process.exit(64);
}
const pkg = join(prefix, "node_modules/@kubernetes-models/prometheus-operator");
const objects = JSON.parse(readFileSync(0, "utf8"));

let failed = 0;
for (const obj of objects) {
  const [group, version] = obj.apiVersion.split("/");
  const id = `${obj.kind}/${obj.metadata?.name}`;
  let Model;
  try {
    Model = (await import(join(pkg, group, version, `${obj.kind}.js`)))[obj.kind];
  } catch {
    console.log(`${id}: no schema for ${obj.apiVersion} ${obj.kind}`);
    failed++;
    continue;
  }
  try {
    new Model(obj).validate();
  } catch (e) {
    console.log(`${id}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
