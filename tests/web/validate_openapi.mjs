// Validates an OpenAPI document against the OpenAPI schema of its version and
// prints {valid, version, errors} as JSON; every $ref must resolve.
//
//   node validate_openapi.mjs FILE
import { Validator } from '@seriousme/openapi-schema-validator';

const [file] = process.argv.slice(2);
const validator = new Validator();
const res = await validator.validate(file);
let refs = null;
if (res.valid) {
  try {
    validator.resolveRefs();
    refs = 'ok';
  } catch (e) {
    refs = String(e);
  }
}
console.log(JSON.stringify({ valid: res.valid, version: validator.version, errors: res.errors || null, refs }));
