// The live generation panel: every div.ddpm-live on the page becomes a small app that runs the book's
// trained eps_theta in the reader's browser (onnxruntime-web in a Web Worker, see worker.js), shows x_t
// and the predicted x_0 as t falls, and then scrubs the new trajectory with a timestep slider.
// URL options, for the benchmark: ?live-threads=N (default: 1, or up to 4 when the page is
// cross-origin isolated) and ?live-optimization=disabled|basic|extended|all (default all).
(function () {
  "use strict";
  var script = document.currentScript;
  var BASE = script ? script.src.replace(/[^/]*$/, "") : "../_static/live/";
  var BOOK_SEEDS = 32;  // seeds.json holds x_T of seeds 0..31, chapter 5's grid and chapter 8's
  var params = new URLSearchParams(window.location.search);
  var MISSING = "onnxruntime-web was left out when this book was built (Node.js and npm were not installed). " +
    "Install them and run `make book` again to get the live panel.";

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") { node.textContent = attrs[k]; } else { node.setAttribute(k, attrs[k]); }
    });
    (children || []).forEach(function (c) { node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return node;
  }

  function threadCount() {
    var asked = parseInt(params.get("live-threads"), 10);
    if (asked > 0) { return window.crossOriginIsolated ? asked : 1; }
    return window.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 2) : 1;
  }

  // Draw a batch (N images of 28 x 28 in [-1, 1]) on a canvas: one image, or a 4 x 4 grid.
  function draw(canvas, x, batch, size) {
    var side = Math.round(Math.sqrt(size)), cols = batch > 1 ? 4 : 1, gap = batch > 1 ? 2 : 0;
    var rows = Math.ceil(batch / cols), width = cols * side + (cols - 1) * gap, height = rows * side + (rows - 1) * gap;
    if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
    var ctx = canvas.getContext("2d"), image = ctx.createImageData(width, height), d = image.data;
    for (var p = 0; p < d.length; p += 4) { d[p] = d[p + 1] = d[p + 2] = 255; d[p + 3] = 255; }
    var levels = DDPMLevels(x);
    for (var n = 0; n < batch; n++) {
      var ox = (n % cols) * (side + gap), oy = Math.floor(n / cols) * (side + gap);
      for (var i = 0; i < side; i++) {
        for (var j = 0; j < side; j++) {
          var v = levels[n * size + i * side + j], q = ((oy + i) * width + ox + j) * 4;
          d[q] = d[q + 1] = d[q + 2] = v;
        }
      }
    }
    ctx.putImageData(image, 0, 0);
  }

  function DDPMLevels(x) {  // as ddpm_core.training.data.to_uint8
    var out = new Uint8ClampedArray(x.length);
    for (var i = 0; i < x.length; i++) { out[i] = Math.round((Math.min(Math.max(x[i], -1), 1) + 1) * 127.5); }
    return out;
  }

  function decodeBytes(base64) {
    return Uint8Array.from(atob(base64), function (c) { return c.charCodeAt(0); }).buffer;
  }

  function decodeNoise(record) { return new Float32Array(decodeBytes(record.x_T)); }

  function Panel(root) {
    this.root = root;
    this.state("loading");
    root.innerHTML = "";
    var number = function (role, min, max, step, value, label) {
      return el("label", {}, [label + " ", el("input", {type: "number", "data-role": role, min: min, max: max,
        step: step, value: value, style: "width: 5.5em;"})]);
    };
    this.controls = el("div", {class: "ddpm-live-controls"}, [
      el("div", {class: "ddpm-live-row"}, [
        number("seed", 0, 4294967295, 1, 0, "seed"),
        el("button", {type: "button", "data-role": "new-seed", text: "New seed"}),
        el("label", {}, [el("input", {type: "checkbox", "data-role": "book-noise", checked: "checked"}),
          " the book's x_T for seeds 0 to 31"]),
      ]),
      el("div", {class: "ddpm-live-row"}, [
        el("label", {}, ["sampler ", el("select", {"data-role": "sampler"}, [
          el("option", {value: "ddpm", text: "DDPM, 1,000 steps (Algorithm 2)"}),
          el("option", {value: "ddim", text: "DDIM"}),
        ])]),
        el("span", {"data-role": "ddim-options"}, [number("steps", 10, 250, 1, 50, "steps"), " ",
          number("eta", 0, 1, 0.1, 1, "eta")]),
        el("span", {"data-role": "ddpm-options"}, [number("noise-scale", 0, 1, 0.1, 1, "noise scale")]),
        el("label", {}, [el("input", {type: "checkbox", "data-role": "grid"}), " 16 at once"]),
      ]),
      el("div", {class: "ddpm-live-row"}, [
        el("button", {type: "button", "data-role": "generate", disabled: "disabled", text: "Generate"}),
        el("button", {type: "button", "data-role": "cancel", disabled: "disabled", text: "Cancel"}),
        el("progress", {"data-role": "progress", max: 1, value: 0, style: "flex: 1 1 10em;"}),
        el("span", {"data-role": "progress-text", class: "ddpm-live-mono"}),
      ]),
    ]);
    this.message = el("p", {"data-role": "message", class: "ddpm-live-message", text: "Loading the model..."});
    var figure = function (role, caption) {
      return el("div", {class: "ddpm-live-figure"}, [el("div", {class: "ddpm-live-caption"}, caption),
        el("canvas", {"data-role": role, width: 28, height: 28})]);
    };
    var xtCaption = [el("i", {text: "x"}), el("sub", {}, [el("i", {text: "t"})])];
    var x0Caption = ["predicted ", el("i", {text: "x"}), el("sub", {text: "0"})];
    this.figures = el("div", {class: "ddpm-live-figures", hidden: "hidden"},  // shown with the first frame
      [figure("xt", xtCaption), figure("x0-pred", x0Caption)]);
    this.slider = el("div", {class: "ddpm-live-row", "data-role": "slider", hidden: "hidden"}, [
      el("button", {type: "button", "data-role": "play", style: "min-width: 6em;"}, ["\u25B6 Play"]),
      el("input", {type: "range", "data-role": "range", min: 0, max: 0, step: 1, value: 0, "aria-label": "timestep t",
        "data-lm-suppress-shortcuts": "true", style: "flex: 1 1 12em;"}),
      el("output", {"data-role": "label", class: "ddpm-live-mono", text: "t = 1000"}),
    ]);
    root.appendChild(this.controls);
    root.appendChild(this.message);
    root.appendChild(this.figures);
    root.appendChild(this.slider);
    this.wire();
    this.start();
  }

  Panel.prototype.part = function (role) { return this.root.querySelector('[data-role="' + role + '"]'); };
  Panel.prototype.state = function (s) { this.root.setAttribute("data-state", s); };
  Panel.prototype.say = function (text, isError) {
    this.message.textContent = text;
    this.message.classList.toggle("ddpm-live-error", !!isError);
  };

  Panel.prototype.wire = function () {
    var self = this;
    var sampler = this.part("sampler");
    var toggle = function () {
      var ddim = sampler.value === "ddim";
      self.part("ddim-options").hidden = !ddim;
      self.part("ddpm-options").hidden = ddim;
    };
    sampler.value = this.root.getAttribute("data-sampler") === "ddim" ? "ddim" : "ddpm";
    sampler.addEventListener("change", toggle);
    toggle();
    this.part("new-seed").addEventListener("click", function () {
      self.part("seed").value = Math.floor(Math.random() * 1e6);
    });
    this.part("generate").addEventListener("click", function () { self.generate(); });
    this.part("cancel").addEventListener("click", function () {
      if (self.worker) { self.worker.postMessage({type: "cancel"}); }
    });
    var range = this.part("range"), play = this.part("play");
    range.addEventListener("input", function () { self.show(Number(range.value)); });
    play.addEventListener("click", function () {
      if (self.timer) { self.stop(); return; }
      if (Number(range.value) >= Number(range.max)) { range.value = 0; self.show(0); }
      play.textContent = "\u275A\u275A Pause";
      self.timer = setInterval(function () {
        var k = Number(range.value) + 1;
        range.value = k;
        self.show(k);
        if (k >= Number(range.max)) { self.stop(); }
      }, 60);
    });
  };

  Panel.prototype.stop = function () {
    clearInterval(this.timer);
    this.timer = null;
    this.part("play").textContent = "\u25B6 Play";
  };

  Panel.prototype.start = function () {
    if (window.location.protocol === "file:") { this.startFromDisk(); return; }
    var self = this;
    this.listen(new Worker(BASE + "worker.js"));
    this.worker.postMessage({type: "init", base: BASE, threads: threadCount(),
      optimization: params.get("live-optimization") || "all"});
    fetch(BASE + "seeds.json").then(function (r) { return r.json(); }).then(function (record) {
      self.bookNoise = decodeNoise(record);
    }).catch(function () { self.bookNoise = null; });
  };

  // A page opened from disk may not fetch files or start a worker from a file: URL. make book writes
  // everything into one script, file-mode.js, which a page may load; the worker starts from its text.
  Panel.prototype.startFromDisk = function () {
    var self = this, loaded = window.DDPM_LIVE_FILE;
    var go = function () {
      var f = window.DDPM_LIVE_FILE, code = f.ort + "\n" + f.sampler + "\n" + f.worker;
      self.listen(new Worker(URL.createObjectURL(new Blob([code], {type: "text/javascript"}))));
      var wasm = decodeBytes(f.wasm), model = decodeBytes(f.model);
      self.worker.postMessage({type: "init", base: BASE, threads: 1, optimization: "all",
        file: {mjs: f.mjs, wasm: wasm, model: model, meta: f.meta}}, [wasm, model]);
      self.bookNoise = decodeNoise(f.seeds);
    };
    if (loaded) { go(); return; }
    var tag = el("script", {src: BASE + "../ort/file-mode.js"});
    tag.onload = go;
    tag.onerror = function () { self.receive({type: "missing"}); };
    document.head.appendChild(tag);
  };

  Panel.prototype.listen = function (worker) {
    var self = this;
    this.worker = worker;
    worker.onmessage = function (event) { self.receive(event.data); };
    worker.onerror = function (event) {
      self.state("error");
      self.say("The panel's worker failed: " + (event.message || "it could not be loaded") + ".", true);
    };
  };

  // A number field's value; NaN when it is empty (or holds no number), which every check below refuses,
  // where Number("") would be 0.
  Panel.prototype.number = function (role) {
    var text = this.part(role).value.trim();
    return text === "" ? NaN : Number(text);
  };

  Panel.prototype.options = function () {
    var sampler = this.part("sampler").value, seed = this.number("seed");
    var batch = this.part("grid").checked ? 16 : 1;
    var steps = this.number("steps"), eta = this.number("eta");
    var noiseScale = this.number("noise-scale");
    if (!(Number.isInteger(seed) && seed >= 0 && seed <= 4294967295)) {
      throw new Error("The seed must be a whole number from 0 to 4294967295.");
    }
    if (sampler === "ddim" && !(Number.isInteger(steps) && steps >= 10 && steps <= 250)) {
      throw new Error("DDIM steps must be a whole number from 10 to 250.");
    }
    if (sampler === "ddim" && !(eta >= 0 && eta <= 1)) { throw new Error("eta must lie between 0 and 1."); }
    if (sampler === "ddpm" && !(noiseScale >= 0 && noiseScale <= 1)) {
      throw new Error("The noise scale must lie between 0 and 1 (1 is Algorithm 2, 0 removes the fresh noise).");
    }
    var seeds = [];
    for (var i = 0; i < batch; i++) { seeds.push(seed + i); }
    var options = {sampler: sampler, steps: steps, eta: eta, noiseScale: noiseScale, seeds: seeds};
    var book = this.part("book-noise").checked && seed + batch <= BOOK_SEEDS && this.bookNoise;
    if (book) { options.initial = this.bookNoise.slice(seed * 784, (seed + batch) * 784); }
    options.bookNoise = !!book;
    return options;
  };

  Panel.prototype.generate = function () {
    var options;
    try { options = this.options(); } catch (error) { this.say(error.message, true); return; }
    this.stop();
    this.running = options;
    this.state("running");
    this.part("generate").disabled = true;
    this.part("cancel").disabled = false;
    this.slider.hidden = true;
    var progress = this.part("progress");
    progress.max = options.sampler === "ddim" ? options.steps : 1000;
    progress.value = 0;
    this.part("progress-text").textContent = "step 0 of " + progress.max + ", t = 1000";  // x_T, before any step
    var source = options.bookNoise ? "x_T of the book's seed" + (options.seeds.length > 1 ? "s " : " ") +
      options.seeds[0] + (options.seeds.length > 1 ? " to " + options.seeds[options.seeds.length - 1] : "")
      : "x_T from the page's own generator";
    this.say("Running in your browser: " + source + ".");
    this.worker.postMessage({type: "run", options: options});
  };

  Panel.prototype.receive = function (m) {
    var batch = this.running ? this.running.seeds.length : 1;
    if (m.type === "ready") {
      this.state("ready");
      this.part("generate").disabled = false;
      this.say("Ready: the book's trained network runs here, on " + m.threads + " thread" +
        (m.threads > 1 ? "s" : "") + ". Choose a seed and a sampler, then Generate.");
    } else if (m.type === "missing" || m.type === "error") {
      this.state(m.type);
      this.part("generate").disabled = true;
      this.say(m.type === "missing" ? MISSING : m.message, true);
    } else if (m.type === "step") {
      var progress = this.part("progress");
      progress.value = m.k;
      this.part("progress-text").textContent = "step " + m.k + " of " + m.total + ", t = " + m.t;
      if (m.x) {
        this.figures.hidden = false;
        draw(this.part("xt"), m.x, batch, 784);
        draw(this.part("x0-pred"), m.x0, batch, 784);
      }
    } else if (m.type === "cancelled") {
      this.finish("cancelled");
      this.say("Cancelled. Generate starts again from t = 1000.");
    } else if (m.type === "done") {
      this.result = {samples: m.samples, uint8: DDPMLevels(m.samples), batch: m.batch, seconds: m.seconds,
        timesteps: m.frames.timesteps, options: this.running};
      this.frames = m.frames;
      this.finish("done");
      // The last step's message showed the network's input there (t = 1); the run ends at x_0, t = 0,
      // the slider's last frame.
      var last = m.frames.timesteps.length - 1;
      this.part("progress-text").textContent = "all " + this.part("progress").max + " steps done, t = " +
        m.frames.timesteps[last];
      var range = this.part("range");
      range.max = m.frames.timesteps.length - 1;
      range.value = range.max;
      this.slider.hidden = false;
      this.show(Number(range.max));
      this.say("Done in " + m.seconds.toFixed(1) + " s. Drag the slider, or press Play, to watch the run again " +
        "from t = 1000 to t = 0.");
    } else if (m.type === "bench" && this.benchResolve) {
      this.benchResolve(m.msPerCall);
      this.benchResolve = null;
    }
  };

  Panel.prototype.finish = function (state) {
    this.state(state);
    this.part("generate").disabled = false;
    this.part("cancel").disabled = true;
  };

  Panel.prototype.show = function (k) {
    var t = this.frames.timesteps[k], label = this.part("label");
    label.textContent = "t = " + t;
    this.part("range").setAttribute("aria-valuetext", label.textContent);
    draw(this.part("xt"), this.frames.xt[k], this.result.batch, 784);
    draw(this.part("x0-pred"), this.frames.x0[k], this.result.batch, 784);
    this.part("xt").setAttribute("data-t", t);
  };

  // For the benchmark: milliseconds per network call at this batch size, in the worker.
  Panel.prototype.bench = function (batch, calls) {
    var self = this;
    return new Promise(function (resolve) {
      self.benchResolve = resolve;
      self.worker.postMessage({type: "bench", batch: batch, calls: calls});
    });
  };

  function style() {
    if (document.getElementById("ddpm-live-style")) { return; }
    var css = el("link", {id: "ddpm-live-style", rel: "stylesheet", href: BASE + "panel.css"});
    document.head.appendChild(css);
  }

  function setUp() {
    style();
    Array.prototype.forEach.call(document.querySelectorAll("div.ddpm-live:not([data-state])"), function (root) {
      root.ddpmLive = new Panel(root);
    });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", setUp); } else { setUp(); }
})();
