(function () {
  "use strict";
  var tip = document.getElementById("tip");
  function show(event) {
    var target = event.target.closest ? event.target.closest("[data-tip]") : null;
    if (target === null) {
      tip.hidden = true;
      return;
    }
    tip.textContent = target.getAttribute("data-tip");
    tip.hidden = false;
    var x = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    tip.style.left = Math.max(4, x) + "px";
    tip.style.top = (event.clientY + 14) + "px";
  }
  document.addEventListener("mouseover", show);
  document.addEventListener("mousemove", show);
  document.addEventListener("mouseleave", function () { tip.hidden = true; });
})();
