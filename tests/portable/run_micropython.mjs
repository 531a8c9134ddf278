// Runs tests/portable/scenario.py and tabs_scenario.py under the MicroPython WebAssembly build (the browser's default
// interpreter) inside Node, with web/client/*.py copied into its in-memory file system.
// Usage: node tests/portable/run_micropython.mjs <repo root> [<folder of .mpy modules>]
//        -> the trace on stdout, exit 1 on error.
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";

const root = process.argv[2] || process.cwd();
const SCENARIO_FILES = ["scenario.py", "tabs_world.py", "tabs_scenario.py", "session_scenario.py"];
const { loadMicroPython } = await import(
  join(root, "node_modules/@micropython/micropython-webassembly-pyscript/micropython.mjs")
);

const lines = [];
const errors = [];
const mp = await loadMicroPython({
  heapsize: 32 * 1024 * 1024,
  stdout: (line) => lines.push(line),
  stderr: (line) => errors.push(line),
});

mp.FS.mkdir("/portable");
mp.FS.mkdir("/portable/client");
// Optional third argument: a folder of the client modules precompiled to .mpy (what the page imports).
const compiledDir = process.argv[3];
const clientDir = compiledDir || join(root, "web/client");
const extension = compiledDir ? ".mpy" : ".py";
for (const name of readdirSync(clientDir).sort()) {
  if (name.endsWith(extension)) {
    mp.FS.writeFile("/portable/client/" + name, readFileSync(join(clientDir, name)));
  }
}
for (const name of SCENARIO_FILES) {
  mp.FS.writeFile("/portable/" + name, readFileSync(join(root, "tests/portable", name), "utf8"));
}

try {
  mp.runPython("import sys\nsys.path.insert(0, '/portable')\nimport scenario\nscenario.main()\nimport tabs_scenario\ntabs_scenario.main()\nimport session_scenario\nsession_scenario.main()\n");
} catch (err) {
  process.stderr.write(errors.join("\n") + "\n" + String(err) + "\n");
  process.exit(1);
}
if (errors.length) {
  process.stderr.write(errors.join("\n") + "\n");
  process.exit(1);
}
process.stdout.write(lines.join("\n") + "\n");
