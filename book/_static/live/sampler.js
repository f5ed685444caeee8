// The reverse process in JavaScript: the same updates as ddpm_core.diffusion.sampling.ddpm_step and
// ddpm_core.diffusion.ddim.ddim_step, with the schedule's arrays read from the exported model.json (never
// re-derived here), and a seedable Gaussian generator of the page's own.
// Loaded by worker.js (importScripts) and by Node (require) for the tests.
(function (root) {
  "use strict";

  // splitmix32 turns a seed into well-mixed state; xoshiro128** draws uniform 32-bit integers.
  function splitmix32(state) {
    return function () {
      state = (state + 0x9e3779b9) | 0;
      var z = state;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
  }

  // A Gaussian generator for one seed: N(0, 1) draws by the Box-Muller transform.
  function Gaussian(seed) {
    var mix = splitmix32(seed >>> 0);
    this.s = [mix(), mix(), mix(), mix()];
    this.spare = null;
  }
  Gaussian.prototype.uint32 = function () {
    var s = this.s;
    var result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    var t = s[1] << 9;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  };
  Gaussian.prototype.uniform = function () {  // in (0, 1): never 0, so log() is finite
    return (this.uint32() + 0.5) / 4294967296;
  };
  Gaussian.prototype.normal = function () {
    if (this.spare !== null) { var v = this.spare; this.spare = null; return v; }
    var r = Math.sqrt(-2 * Math.log(this.uniform())), angle = 2 * Math.PI * this.uniform();
    this.spare = r * Math.sin(angle);
    return r * Math.cos(angle);
  };
  Gaussian.prototype.fill = function (array, offset, count) {
    for (var i = 0; i < count; i++) { array[offset + i] = this.normal(); }
  };
  function rotl(x, k) { return (x << k) | (x >>> (32 - k)); }

  // DDIM's visited timesteps, largest first: linspace(1, T, S) rounded halves up (ddim.ddim_timesteps).
  function ddimTimesteps(T, S) {
    if (!(Number.isInteger(S) && S >= 1 && S <= T)) { throw new Error("DDIM steps must be an integer from 1 to " + T); }
    if (S === 1) { return [T]; }
    var taus = [];
    for (var i = 0; i < S; i++) { taus.push(Math.floor(1 + i * (T - 1) / (S - 1) + 0.5)); }
    return taus.reverse();
  }

  function alphaBarF64(schedule, t) { return t === 0 ? 1 : schedule.alpha_bars_f64[t - 1]; }

  // sigma of the DDIM step t -> tPrev, Song et al. 2021, eq. (16), scaled by eta.
  function ddimSigma(schedule, t, tPrev, eta) {
    var a = alphaBarF64(schedule, t), aPrev = alphaBarF64(schedule, tPrev);
    return eta * Math.sqrt((1 - aPrev) / (1 - a) * (1 - a / aPrev));
  }

  // x_0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), schedule.predict_x0
  function predictX0(schedule, x, eps, t, out) {
    var a = schedule.alpha_bars[t - 1], s = Math.sqrt(1 - a), r = Math.sqrt(a);
    for (var i = 0; i < x.length; i++) { out[i] = (x[i] - s * eps[i]) / r; }
    return out;
  }

  // One ancestral step x_t -> x_{t-1}, Ho et al. 2020, Algorithm 2, line 4 (sampling.ddpm_step):
  // x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) + noiseScale sigma_t z,
  // sigma_t^2 = beta_t, and no noise at t = 1.
  function ddpmStep(schedule, x, eps, t, noise, noiseScale) {
    var alpha = schedule.alphas[t - 1], beta = schedule.betas[t - 1], alphaBar = schedule.alpha_bars[t - 1];
    var c = beta / Math.sqrt(1 - alphaBar), r = Math.sqrt(alpha);
    var sigma = (t > 1 && noiseScale > 0) ? noiseScale * Math.sqrt(schedule.betas[t - 1]) : 0;
    var out = new Float32Array(x.length);
    for (var i = 0; i < x.length; i++) {
      out[i] = (x[i] - c * eps[i]) / r + (sigma > 0 ? sigma * noise[i] : 0);
    }
    return out;
  }

  // One DDIM step x_t -> x_{tPrev}, Song et al. 2021, eq. (12) (ddim.ddim_step).
  function ddimStep(schedule, x, eps, t, tPrev, eta, noise, x0Out) {
    var aPrev = alphaBarF64(schedule, tPrev), sigma = ddimSigma(schedule, t, tPrev, eta);
    predictX0(schedule, x, eps, t, x0Out);
    var d = Math.sqrt(Math.max(1 - aPrev - sigma * sigma, 0)), r = Math.sqrt(aPrev);
    var out = new Float32Array(x.length);
    for (var i = 0; i < x.length; i++) {
      out[i] = r * x0Out[i] + d * eps[i] + (sigma > 0 ? sigma * noise[i] : 0);
    }
    return out;
  }

  // The timesteps a run visits, each with the one it steps to: [[t, tPrev], ...].
  function plan(schedule, options) {
    var T = schedule.num_steps;
    var taus = options.sampler === "ddim" ? ddimTimesteps(T, options.steps) : null;
    var pairs = [];
    if (taus) {
      for (var k = 0; k < taus.length; k++) { pairs.push([taus[k], k + 1 < taus.length ? taus[k + 1] : 0]); }
    } else {
      for (var t = T; t >= 1; t--) { pairs.push([t, t - 1]); }
    }
    return pairs;
  }

  // Frames kept for the slider: every DDIM step; every tenth DDPM step (1000, 990, ..., 10); and t = 0.
  function captures(options, t) { return options.sampler === "ddim" || t % 10 === 0; }

  // The whole reverse process for a batch. eps(x, t, batch) -> Promise<Float32Array> is the network;
  // x_T comes from options.initial (Float32Array) when given, else each sample's own generator.
  // onStep({k, total, t, x, x0}) runs after every network call; return false from shouldStop to cancel.
  async function run(schedule, eps, options, onStep, shouldStop) {
    var size = schedule.image_shape.reduce(function (a, b) { return a * b; }, 1);
    var batch = options.seeds.length;
    var generators = options.seeds.map(function (s) { return new Gaussian(s); });
    var x = new Float32Array(batch * size);
    generators.forEach(function (g, i) { g.fill(x, i * size, size); });  // x_T: each seed's first draws
    if (options.initial) { x.set(options.initial); }
    var pairs = plan(schedule, options);
    var frames = {timesteps: [], xt: [], x0: []};
    var x0 = new Float32Array(x.length), noise = new Float32Array(x.length);
    for (var k = 0; k < pairs.length; k++) {
      if (shouldStop && shouldStop()) { return null; }
      var t = pairs[k][0], tPrev = pairs[k][1];
      var e = await eps(x, t, batch);
      var fresh = options.sampler === "ddim" ? ddimSigma(schedule, t, tPrev, options.eta) > 0
        : (t > 1 && options.noiseScale > 0);
      if (fresh) { generators.forEach(function (g, i) { g.fill(noise, i * size, size); }); }
      var next;
      if (options.sampler === "ddim") {
        next = ddimStep(schedule, x, e, t, tPrev, options.eta, noise, x0);
      } else {
        predictX0(schedule, x, e, t, x0);
        next = ddpmStep(schedule, x, e, t, noise, options.noiseScale);
      }
      if (captures(options, t)) {
        frames.timesteps.push(t); frames.xt.push(x.slice()); frames.x0.push(x0.slice());
      }
      if (onStep) { onStep({k: k + 1, total: pairs.length, t: t, x: x, x0: x0}); }
      x = next;
    }
    frames.timesteps.push(0); frames.xt.push(x.slice()); frames.x0.push(x.slice());
    return {samples: x, frames: frames, size: size, batch: batch};
  }

  // [-1, 1] -> {0..255}, clipped and rounded as ddpm_core.training.data.to_uint8 (which rounds an exact half to
  // even where Math.round rounds it up: the two can differ by one level there).
  function toUint8(x) {
    var out = new Uint8Array(x.length);
    for (var i = 0; i < x.length; i++) {
      var v = (Math.min(Math.max(x[i], -1), 1) + 1) * 127.5;
      out[i] = Math.round(v);
    }
    return out;
  }

  var api = {Gaussian: Gaussian, ddimTimesteps: ddimTimesteps, ddimSigma: ddimSigma, predictX0: predictX0,
    ddpmStep: ddpmStep, ddimStep: ddimStep, plan: plan, run: run, toUint8: toUint8};
  if (typeof module !== "undefined" && module.exports) { module.exports = api; } else { root.DDPMSampler = api; }
})(typeof self !== "undefined" ? self : this);
