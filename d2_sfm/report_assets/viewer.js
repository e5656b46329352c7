// d2_sfm report: 3D view of points and cameras on a 2D canvas (no library, no network).
// Data: the JSON in <script id="d2sfm-data">: {view: {centre, basis, radius}, points: {xyz, rgb},
// cameras: [{name, kind, c, corners}]}. Drag: rotate; shift+drag or right-drag: pan; wheel: zoom.
(function () {
  "use strict";
  var BACKGROUND = [20, 22, 26];
  var KIND_COLOURS = {registered: "#ff5a4e", query: "#4ec3ff", unregistered: "#999999"};

  function readData() {
    var node = document.getElementById("d2sfm-data");
    return node ? JSON.parse(node.textContent) : null;
  }

  function matMul(a, b) {  // 3x3 row-major arrays of 9
    var r = new Array(9);
    for (var i = 0; i < 3; i++) {
      for (var j = 0; j < 3; j++) {
        r[3 * i + j] = a[3 * i] * b[j] + a[3 * i + 1] * b[3 + j] + a[3 * i + 2] * b[6 + j];
      }
    }
    return r;
  }

  function rotX(t) { var c = Math.cos(t), s = Math.sin(t); return [1, 0, 0, 0, c, -s, 0, s, c]; }
  function rotY(t) { var c = Math.cos(t), s = Math.sin(t); return [c, 0, s, 0, 1, 0, -s, 0, c]; }

  function Viewer(canvas, data) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.data = data;
    this.centre = data.view.centre.slice();
    this.rotation = data.view.basis.slice();  // rows: screen right, screen up, viewing direction
    this.radius = data.view.radius || 1;
    this.distance = 1.4 * this.radius;
    this.pan = [0, 0];
    var xyz = data.points.xyz, n = xyz.length / 3;
    this.xyz = new Float32Array(xyz);
    this.rgb = new Uint8Array(data.points.rgb);
    this.numPoints = n;
    this.showCameras = true;
    this.drawnPoints = 0;
    this.attach();
  }

  Viewer.prototype.resize = function () {
    var ratio = window.devicePixelRatio || 1;
    var rect = this.canvas.getBoundingClientRect();
    var width = Math.max(1, Math.round(rect.width * ratio)), height = Math.max(1, Math.round(rect.height * ratio));
    if (this.canvas.width !== width || this.canvas.height !== height) {
      this.canvas.width = width;
      this.canvas.height = height;
    }
  };

  Viewer.prototype.project = function (x, y, z, out) {
    var m = this.rotation;
    var dx = x - this.centre[0], dy = y - this.centre[1], dz = z - this.centre[2];
    var vx = m[0] * dx + m[1] * dy + m[2] * dz + this.pan[0];
    var vy = m[3] * dx + m[4] * dy + m[5] * dz + this.pan[1];
    var vz = m[6] * dx + m[7] * dy + m[8] * dz + this.distance;
    if (vz <= 1e-6 * this.radius) { return false; }
    var f = 0.75 * Math.min(this.canvas.width, this.canvas.height);
    out[0] = this.canvas.width / 2 + f * vx / vz;
    out[1] = this.canvas.height / 2 - f * vy / vz;
    out[2] = vz;
    return true;
  };

  Viewer.prototype.draw = function () {
    this.resize();
    var w = this.canvas.width, h = this.canvas.height, ctx = this.ctx;
    var image = ctx.createImageData(w, h), pixels = image.data;
    var depth = new Float32Array(w * h);
    for (var i = 0; i < w * h; i++) {
      pixels[4 * i] = BACKGROUND[0]; pixels[4 * i + 1] = BACKGROUND[1];
      pixels[4 * i + 2] = BACKGROUND[2]; pixels[4 * i + 3] = 255;
      depth[i] = Infinity;
    }
    var ratio = window.devicePixelRatio || 1, drawn = 0, p = [0, 0, 0];
    var size = Math.max(2, Math.round(ratio * (this.numPoints < 20000 ? 3 : 2)));
    for (var k = 0; k < this.numPoints; k++) {
      if (!this.project(this.xyz[3 * k], this.xyz[3 * k + 1], this.xyz[3 * k + 2], p)) { continue; }
      var x0 = Math.round(p[0]) - (size >> 1), y0 = Math.round(p[1]) - (size >> 1);
      if (x0 + size <= 0 || y0 + size <= 0 || x0 >= w || y0 >= h) { continue; }
      drawn++;
      for (var yy = Math.max(0, y0); yy < Math.min(h, y0 + size); yy++) {
        for (var xx = Math.max(0, x0); xx < Math.min(w, x0 + size); xx++) {
          var idx = yy * w + xx;
          if (p[2] < depth[idx]) {
            depth[idx] = p[2];
            pixels[4 * idx] = this.rgb[3 * k]; pixels[4 * idx + 1] = this.rgb[3 * k + 1];
            pixels[4 * idx + 2] = this.rgb[3 * k + 2];
          }
        }
      }
    }
    ctx.putImageData(image, 0, 0);
    this.drawnPoints = drawn;
    if (this.showCameras) { this.drawCameras(); }
    this.canvas.setAttribute("data-drawn-points", String(drawn));
  };

  Viewer.prototype.drawCameras = function () {
    var ctx = this.ctx, cams = this.data.cameras, c = [0, 0, 0], q = [0, 0, 0];
    ctx.lineWidth = Math.max(1, (window.devicePixelRatio || 1) * 1.2);
    for (var i = 0; i < cams.length; i++) {
      var cam = cams[i];
      if (!this.project(cam.c[0], cam.c[1], cam.c[2], c)) { continue; }
      ctx.strokeStyle = KIND_COLOURS[cam.kind] || "#ffffff";
      ctx.beginPath();
      var corners = [];
      for (var j = 0; j < cam.corners.length; j++) {
        if (!this.project(cam.corners[j][0], cam.corners[j][1], cam.corners[j][2], q)) { corners = null; break; }
        corners.push([q[0], q[1]]);
      }
      if (!corners) { continue; }
      for (j = 0; j < corners.length; j++) {
        ctx.moveTo(c[0], c[1]);
        ctx.lineTo(corners[j][0], corners[j][1]);
      }
      ctx.moveTo(corners[0][0], corners[0][1]);
      for (j = 1; j <= corners.length; j++) { ctx.lineTo(corners[j % corners.length][0], corners[j % corners.length][1]); }
      ctx.stroke();
    }
  };

  Viewer.prototype.schedule = function () {
    var self = this;
    if (this.pending) { return; }
    this.pending = true;
    window.requestAnimationFrame(function () { self.pending = false; self.draw(); });
  };

  Viewer.prototype.attach = function () {
    var self = this, canvas = this.canvas, last = null, panning = false;
    canvas.addEventListener("contextmenu", function (e) { e.preventDefault(); });
    canvas.addEventListener("mousedown", function (e) {
      last = [e.clientX, e.clientY];
      panning = e.shiftKey || e.button === 2;
      e.preventDefault();
    });
    window.addEventListener("mouseup", function () { last = null; });
    window.addEventListener("mousemove", function (e) {
      if (!last) { return; }
      var dx = e.clientX - last[0], dy = e.clientY - last[1];
      last = [e.clientX, e.clientY];
      if (panning) {
        var s = self.distance / (0.75 * Math.min(canvas.clientWidth, canvas.clientHeight));
        self.pan[0] += dx * s;
        self.pan[1] -= dy * s;
      } else {
        self.rotation = matMul(rotX(dy * 0.008), matMul(rotY(-dx * 0.008), self.rotation));
      }
      self.schedule();
    });
    canvas.addEventListener("wheel", function (e) {
      e.preventDefault();
      self.distance *= Math.exp(e.deltaY * 0.0015);
      self.distance = Math.max(0.05 * self.radius, Math.min(50 * self.radius, self.distance));
      self.schedule();
    }, {passive: false});
    window.addEventListener("resize", function () { self.schedule(); });
  };

  Viewer.prototype.reset = function () {
    this.rotation = this.data.view.basis.slice();
    this.distance = 1.4 * this.radius;
    this.pan = [0, 0];
    this.schedule();
  };

  function start() {
    var data = readData(), canvas = document.getElementById("d2sfm-view");
    if (!data || !canvas || !data.view) { return; }
    var viewer = new Viewer(canvas, data);
    window.d2sfmViewer = viewer;
    var reset = document.getElementById("d2sfm-reset"), toggle = document.getElementById("d2sfm-cameras");
    if (reset) { reset.addEventListener("click", function () { viewer.reset(); }); }
    if (toggle) {
      toggle.addEventListener("change", function () { viewer.showCameras = toggle.checked; viewer.schedule(); });
    }
    viewer.draw();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
