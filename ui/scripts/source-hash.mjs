// The hash of the dashboard's sources, stored in the built bundle (source-hash.txt) so that a
// test can tell, without Node, when the committed bundle is out of step with ui/.
// Files: index.html, package.json, package-lock.json, tsconfig.json, vite.config.ts and
// everything under src/ and scripts/, sorted by path; each hashed as "path\0content\0".
import { createHash } from "node:crypto";
import { readFileSync, readdirSync, writeFileSync, statSync } from "node:fs";
import { join, relative, sep } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const TOP = ["index.html", "package.json", "package-lock.json", "tsconfig.json", "vite.config.ts"];
const DIRS = ["src", "scripts"];

function walk(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...walk(path));
    else out.push(path);
  }
  return out;
}

const files = [...TOP.map((f) => join(root, f)), ...DIRS.flatMap((d) => walk(join(root, d)))]
  .map((p) => relative(root, p).split(sep).join("/"))
  .sort();
const hash = createHash("sha256");
for (const file of files) {
  hash.update(file + "\0");
  hash.update(readFileSync(join(root, file)));
  hash.update("\0");
}
const digest = hash.digest("hex");
if (process.argv.includes("--write")) {
  writeFileSync(join(root, "..", "app", "ui", "static", "source-hash.txt"), digest + "\n");
}
console.log(digest);
