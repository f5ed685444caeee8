// The live panel's Web Worker: it loads onnxruntime-web and the exported eps_theta, and runs the
// reverse process of sampler.js off the page's main thread.
// Messages in:  {type: "init", base, threads, optimization, file?}, {type: "run", options}, {type: "cancel"},
//               {type: "bench", batch, calls}
// Messages out: {type: "ready", threads, checkpoint} | {type: "missing"} | {type: "error", message}
//               {type: "step", k, total, t, x?, x0?} | {type: "done", samples, frames, seconds}
//               {type: "cancelled"} | {type: "bench", msPerCall}
"use strict";

var session = null, schedule = null, cancelled = false, lastPost = 0;

function fail(type, message) { self.postMessage({type: type, message: String(message)}); }

async function init(m) {
  var base = m.base, file = m.file;  // file: everything fetched otherwise, for a page opened from disk
  if (!file) {
    try {
      importScripts(base + "../ort/ort.wasm.min.js");
    } catch (error) {
      self.postMessage({type: "missing"});
      return;
    }
  }
  try {
    var meta, model;
    if (file) {  // onnxruntime-web and sampler.js came with this worker's own source
      ort.env.wasm.wasmBinary = file.wasm;
      ort.env.wasm.wasmPaths = {mjs: URL.createObjectURL(new Blob([file.mjs], {type: "text/javascript"}))};
      meta = file.meta;
      model = file.model;
    } else {
      importScripts(base + "sampler.js");
      ort.env.wasm.wasmPaths = new URL("../ort/", new URL(base, self.location.href)).href;
      [meta, model] = await Promise.all([
        fetch(base + "model.json").then(function (r) { return r.json(); }),
        fetch(base + "model.onnx").then(function (r) { return r.arrayBuffer(); }),
      ]);
    }
    ort.env.wasm.numThreads = m.threads;
    ort.env.logLevel = "error";
    schedule = meta;
    session = await ort.InferenceSession.create(model, {
      executionProviders: ["wasm"], graphOptimizationLevel: m.optimization || "all",
    });
    self.postMessage({type: "ready", threads: ort.env.wasm.numThreads, checkpoint: meta.checkpoint.sha256});
  } catch (error) {
    fail("error", "The model could not be loaded: " + error);
  }
}

// A zero-delay turn of the event loop, so that a "cancel" message is read between two network calls
// (setTimeout(0) would wait up to 4 ms each time).
var channel = new MessageChannel(), resumes = [];
channel.port1.onmessage = function () { resumes.shift()(); };
function yieldToMessages() {
  return new Promise(function (resolve) { resumes.push(resolve); channel.port2.postMessage(null); });
}

async function eps(x, t, batch) {
  var shape = [batch].concat(schedule.image_shape);
  var steps = new Float32Array(batch).fill(t);
  var out = await session.run({x: new ort.Tensor("float32", x, shape), t: new ort.Tensor("float32", steps, [batch])});
  await yieldToMessages();
  return out.eps.data;
}

async function run(options) {
  cancelled = false;
  var started = performance.now();
  var result = await DDPMSampler.run(schedule, eps, options, function (step) {
    var now = performance.now(), message = {type: "step", k: step.k, total: step.total, t: step.t};
    if (now - lastPost > 40 || step.k === step.total) {  // images at most 25 times a second
      message.x = step.x.slice(); message.x0 = step.x0.slice();
      lastPost = now;
    }
    self.postMessage(message);
  }, function () { return cancelled; });
  if (result === null) { self.postMessage({type: "cancelled"}); return; }
  self.postMessage({type: "done", samples: result.samples, frames: result.frames, size: result.size,
    batch: result.batch, seconds: (performance.now() - started) / 1000});
}

async function bench(batch, calls) {
  var size = schedule.image_shape.reduce(function (a, b) { return a * b; }, 1);
  var x = new Float32Array(batch * size);
  new DDPMSampler.Gaussian(0).fill(x, 0, x.length);
  // Warm-up: V8 first runs WebAssembly from a quick baseline compile and swaps in optimised code
  // in the background, so the first calls of a page are slower than the rest.
  for (var w = 0; w < 20; w++) { await eps(x, 500, batch); }
  var started = performance.now();
  for (var i = 0; i < calls; i++) { await eps(x, 1000 - i, batch); }
  self.postMessage({type: "bench", msPerCall: (performance.now() - started) / calls});
}

self.onmessage = function (event) {
  var m = event.data;
  var job = m.type === "init" ? init(m)
    : m.type === "run" ? run(m.options)
    : m.type === "bench" ? bench(m.batch, m.calls)
    : null;
  if (m.type === "cancel") { cancelled = true; }
  if (job) { job.catch(function (error) { fail("error", error && error.message ? error.message : error); }); }
};
