(function () {
  var root = document.getElementById("$id");
  function part(role) { return root.querySelector('[data-role="' + role + '"]'); }
  var frames = JSON.parse(part("frames").textContent);
  var range = part("range"), label = part("label"), play = part("play");
  var panels = [[part("xt"), frames.xt, "x_t"], [part("x0-pred"), frames.x0_pred, "predicted x_0"]];
  var timer = null;
  function show(k) {
    var t = frames.timesteps[k];
    label.textContent = "t = " + t;
    range.setAttribute("aria-valuetext", label.textContent);
    panels.forEach(function (panel) {
      panel[0].src = "data:image/png;base64," + panel[1][k];
      panel[0].setAttribute("data-t", t);
      panel[0].alt = panel[2] + " at t = " + t;
    });
  }
  function stop() {
    clearInterval(timer);
    timer = null;
    play.innerHTML = "&#9654; Play";
  }
  range.addEventListener("input", function () { show(Number(range.value)); });
  play.addEventListener("click", function () {
    if (timer !== null) { stop(); return; }
    if (Number(range.value) >= Number(range.max)) { range.value = 0; show(0); }
    play.innerHTML = "&#10074;&#10074; Pause";
    timer = setInterval(function () {
      var k = Number(range.value) + 1;
      range.value = k;
      show(k);
      if (k >= Number(range.max)) { stop(); }
    }, $frame_ms);
  });
})();
