// `asyncapi validate FILE` without the 1.5 GB CLI: the CLI's validate command is this
// parser (the same version, @asyncapi/cli 4.1.1 ships 3.6.6) with its default ruleset.
// Prints one line per diagnostic; exits 1 when any is an error or a warning.
import { readFileSync } from "node:fs";
import { DiagnosticSeverity, Parser } from "@asyncapi/parser";

const file = process.argv[2];
const diagnostics = await new Parser().validate(readFileSync(file, "utf8"), { source: file });
const severity = ["error", "warning", "information", "hint"];
for (const d of diagnostics) {
  const at = `${file}:${d.range.start.line + 1}:${d.range.start.character + 1}`;
  console.log(`${at} ${severity[d.severity]} ${d.code}: ${d.message} (${d.path.join("/")})`);
}
const failing = diagnostics.filter(
  (d) => d.severity === DiagnosticSeverity.Error || d.severity === DiagnosticSeverity.Warning);
process.exit(failing.length ? 1 : 0);
