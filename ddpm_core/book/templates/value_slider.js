(function () {
  var root = document.getElementById("$id");
  function part(role) { return root.querySelector('[data-role="' + role + '"]'); }
  var frames = JSON.parse(part("frames").textContent);
  var range = part("range"), label = part("label"), play = part("play"), image = part("image");
  var timer = null;
  function show(k) {
    var value = frames.labels[k];
    label.textContent = "$symbol = " + value;
    range.setAttribute("aria-valuetext", label.textContent);
    image.src = "data:image/png;base64," + frames.images[k];
    image.setAttribute("data-value", value);
    image.alt = "$caption, " + label.textContent;
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
