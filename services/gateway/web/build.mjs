// Builds src/ into ../static: hashed bundles under assets/, and index.html naming them.
// Run by `make` (scripts/build_web.py) with Node from PyPI; `node build.mjs` by hand works too.
import { build } from "esbuild";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { brotliCompressSync, constants, gzipSync } from "node:zlib";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const out = path.resolve(process.env.WEB_OUT_DIR || path.join(here, "..", "static"));
const assets = path.join(out, "assets");

await rm(out, { recursive: true, force: true });
await mkdir(assets, { recursive: true });

const result = await build({
  entryPoints: { app: path.join(here, "src", "main.js"), style: path.join(here, "src", "style.css") },
  bundle: true,
  splitting: true, // the Firebase SDK is a chunk of its own, loaded only under AUTH_MODE=firebase
  format: "esm",
  target: ["es2022"],
  minify: true,
  sourcemap: false,
  legalComments: "linked",
  entryNames: "[name]-[hash]",
  chunkNames: "chunk-[hash]",
  assetNames: "[name]-[hash]",
  outdir: assets,
  metafile: true,
  logLevel: "warning",
});

const outputs = Object.entries(result.metafile.outputs);
const entry = (name) => {
  const found = outputs.find(([, meta]) => meta.entryPoint && path.basename(meta.entryPoint).startsWith(name));
  if (!found) throw new Error(`no output for ${name}`);
  return "/assets/" + path.basename(found[0]);
};
// Precompressed copies: the gateway's FileResponse sends them to browsers that accept them.
for (const [file] of outputs) {
  if (!/\.(js|css)$/.test(file)) continue;
  const body = await readFile(file);
  await writeFile(file + ".br", brotliCompressSync(body, { params: { [constants.BROTLI_PARAM_QUALITY]: 11 } }));
  await writeFile(file + ".gz", gzipSync(body, { level: 9 }));
}

const template = await readFile(path.join(here, "src", "index.html"), "utf8");
const html = template.replace("%APP_JS%", entry("main.js")).replace("%APP_CSS%", entry("style.css"));
await writeFile(path.join(out, "index.html"), html);
await writeFile(
  path.join(out, "manifest.json"),
  JSON.stringify({ files: outputs.map(([file]) => "/assets/" + path.basename(file)).sort() }, null, 1) + "\n",
);
console.log(`web assets: ${outputs.length} files in ${path.relative(process.cwd(), out) || out}`);
