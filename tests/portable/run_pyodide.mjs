// Runs tests/portable/scenario.py and tabs_scenario.py under Pyodide (the optional browser interpreter) inside Node,
// with web/client/*.py copied into its in-memory file system.
// Usage: node tests/portable/run_pyodide.mjs <repo root>   -> the trace on stdout, exit 1 on error.
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";

const root = process.argv[2] || process.cwd();
const { loadPyodide } = await import(join(root, "node_modules/pyodide/pyodide.mjs"));

const lines = [];
const py = await loadPyodide({ indexURL: join(root, "node_modules/pyodide") + "/" });
py.setStdout({ batched: (line) => lines.push(line) });

py.FS.mkdirTree("/portable/client");
const clientDir = join(root, "web/client");
for (const name of readdirSync(clientDir).sort()) {
  if (name.endsWith(".py")) {
    py.FS.writeFile("/portable/client/" + name, readFileSync(join(clientDir, name), "utf8"));
  }
}
for (const name of ["scenario.py", "tabs_world.py", "tabs_scenario.py", "session_scenario.py"]) {
  py.FS.writeFile("/portable/" + name, readFileSync(join(root, "tests/portable", name), "utf8"));
}

try {
  py.runPython("import sys\nsys.path.insert(0, '/portable')\nimport scenario\nscenario.main()\nimport tabs_scenario\ntabs_scenario.main()\nimport session_scenario\nsession_scenario.main()\n");
} catch (err) {
  process.stderr.write(String(err) + "\n");
  process.exit(1);
}
process.stdout.write(lines.join("\n") + "\n");
