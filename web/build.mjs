// Bundles the console into dist/: index.html (never cached) and
// content-hashed assets under dist/assets/ (cached forever), each with a
// .gz twin the gateway serves to clients that accept gzip.
//   node build.mjs          one production build
//   node build.mjs --watch  rebuild on change (development)
import { mkdir, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import * as esbuild from 'esbuild';

const root = dirname(fileURLToPath(import.meta.url));
const dist = join(root, 'dist');
const watch = process.argv.includes('--watch');

async function writeHtml(metafile) {
  const outputs = Object.entries(metafile.outputs);
  const find = (ext) => {
    const hit = outputs.find(([file, o]) => o.entryPoint && file.endsWith(ext))
      ?? outputs.find(([file]) => file.endsWith(ext));
    if (!hit) throw new Error(`no ${ext} output`);
    return '/' + relative(dist, join(root, hit[0])).split('\\').join('/');
  };
  const template = await readFile(join(root, 'index.html'), 'utf8');
  const html = template
    .replace('<!--app.css-->', `<link rel="stylesheet" href="${find('.css')}">`)
    .replace('<!--app.js-->', `<script type="module" src="${find('.js')}"></script>`);
  await writeFile(join(dist, 'index.html'), html);
}

async function gzipAll(dir) {
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) await gzipAll(p);
    else if (/\.(js|css|html|svg|map|json)$/.test(e.name)) {
      const data = await readFile(p);
      if (data.length > 1024) await writeFile(p + '.gz', gzipSync(data, { level: 9 }));
    }
  }
}

const options = {
  absWorkingDir: root,
  entryPoints: ['src/main.ts'],
  bundle: true,
  format: 'esm',
  target: ['es2022', 'chrome100', 'firefox100', 'safari15'],
  outdir: 'dist/assets',
  entryNames: '[name]-[hash]',
  assetNames: '[name]-[hash]',
  loader: { '.woff2': 'file', '.svg': 'file' },
  minify: !watch,
  sourcemap: watch ? 'inline' : false,
  metafile: true,
  legalComments: 'linked',
  logLevel: 'info',
  plugins: [{
    name: 'html',
    setup(build) {
      build.onEnd(async (result) => {
        if (result.errors.length === 0 && result.metafile) await writeHtml(result.metafile);
      });
    },
  }],
};

await rm(dist, { recursive: true, force: true });
await mkdir(join(dist, 'assets'), { recursive: true });
await writeFile(join(dist, 'favicon.svg'), await readFile(join(root, 'favicon.svg')));
if (watch) {
  const ctx = await esbuild.context(options);
  await ctx.watch();
} else {
  await esbuild.build(options);
  await gzipAll(dist);
}
