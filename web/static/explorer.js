// The explorer: a client of the server's public REST API only (the repository index, model
// config, classify, activations, explain), so whatever it shows a script can fetch too.
// No framework and no build step: the browser runs this file as it is.

const $ = (id) => document.getElementById(id);
const page = document.body.dataset;
const state = {
  model: "", version: "", pinned: "", image: null, example: "", result: null, classes: [],
  unit: null, rule: "deconvnet-unit", target: null, retry: null, offline: false,
};
const MAP_PX = 48;  // a channel's map is drawn about this tall
const VIEW_PX = 224;  // the input and projections are drawn this big

// -- talking to the server --------------------------------------------------------------------

class ServerError extends Error {}

async function call(path, { body = null, query = {} } = {}) {
  const url = new URL(path, window.location.href);
  for (const [key, value] of Object.entries(query)) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(key, value);
  }
  let response;
  try {
    response = await fetch(url, body === null ? {} : { method: "POST", body });
  } catch (error) {
    lostServer();
    throw new ServerError("the server is not answering");
  }
  const text = await response.text();
  let document = null;
  try { document = text ? JSON.parse(text) : {}; } catch (error) { document = { error: text }; }
  if (!response.ok) throw new ServerError(document.error || `${response.status} ${response.statusText}`);
  return document;
}

function lostServer() {
  if (state.offline) return;
  state.offline = true;
  say("The server is not answering; this page retries every second and carries on when it is back.", true);
  const poll = async () => {
    try {
      const answer = await fetch("/v2/health/ready");
      if (answer.ok) {
        state.offline = false;
        say("The server is back.");
        if (state.retry) state.retry();
        return;
      }
    } catch (error) { /* still away */ }
    setTimeout(poll, 1000);
  };
  setTimeout(poll, 1000);
}

function say(message, error = false) {
  const box = $("status");
  box.hidden = !message;
  box.textContent = message || "";
  box.classList.toggle("error", error);
}

function fail(error, what) {
  if (!(error instanceof ServerError) || !state.offline) {
    const hint = /explanation|activations|graph/i.test(error.message)
      ? " (explanation graphs are built from the model's model.onnx; to ship them with the " +
        "repository: cnnzoo explain-export REPOSITORY)" : "";
    say(`${what}: ${error.message}${hint}`, true);
  }
}

// A link's version is kept: the view it names is of that version (NOT_FOUND once it is gone).
function modelPath() {
  const base = `/v2/models/${encodeURIComponent(state.model)}`;
  return state.pinned ? `${base}/versions/${encodeURIComponent(state.pinned)}` : base;
}

// -- models -----------------------------------------------------------------------------------

async function loadModels() {
  const index = await call("/v2/repository/index", { body: "{}" });
  const ready = index.filter((m) => m.state === "READY").map((m) => m.name);
  const select = $("model");
  select.replaceChildren(...ready.map((name) => new Option(name, name)));
  if (!ready.length) say("The server serves no model yet.", true);
  return ready;
}

async function chooseModel(name) {
  state.model = name;
  $("model").value = name;
  const config = await call(`/v2/models/${encodeURIComponent(name)}/config`);
  const dims = (config.input && config.input[0] && config.input[0].dims) || [];
  const dataset = (config.parameters && config.parameters.dataset &&
                   config.parameters.dataset.string_value) || "";
  $("model-facts").textContent = `input ${dims.join("x")}${dataset ? `, trained on ${dataset}` : ""}`;
  state.version = "";
  if (state.image) await runImage(state.image);
}

// -- images -----------------------------------------------------------------------------------

function showExamples() {
  const list = JSON.parse(page.examples || "[]");
  $("examples").replaceChildren(...list.map((path) => {
    const img = new Image();
    img.src = `examples/${path}`;
    img.alt = img.title = path;
    img.addEventListener("click", () => useExample(path));
    return img;
  }));
}

async function useExample(path) {
  const blob = await (await fetch(`examples/${path}`)).blob();
  state.example = path;
  await runImage(blob);
}

async function runImage(blob) {
  state.image = blob;
  state.retry = () => runImage(blob);
  performance.clearMarks("image-chosen");
  performance.mark("image-chosen");
  say("");
  try {
    const [classes, maps] = await Promise.all([
      call(`${modelPath()}/classify`, { body: blob, query: { top_k: 1000 } }),
      call(`${modelPath()}/activations`, { body: blob }),
    ]);
    state.version = maps.version;
    state.classes = classes.predictions;
    state.result = maps;
    await Promise.all([drawStrip(maps), drawInput(maps), drawTop(classes.predictions)]);
    performance.measure("maps-drawn", "image-chosen");
    $("result").hidden = false;
    state.retry = null;
    updateLink();
    if (state.unit) await openUnit(state.unit.layer, state.unit.channel, state.unit.position);
    await classView();
  } catch (error) {
    fail(error, "This image could not be explored");
  }
}

function readImageFile(file) {
  if (!file) return;
  state.example = "";
  runImage(file);
}

// -- drawing ----------------------------------------------------------------------------------

function picture(png) {
  const img = new Image();
  img.src = `data:image/png;base64,${png}`;
  return img;
}

async function drawInput(maps) {
  const img = $("input");
  img.src = `data:image/png;base64,${maps.input_png}`;
  await img.decode();
  const canvas = $("field");
  canvas.width = img.naturalWidth * 8;
  canvas.height = img.naturalHeight * 8;
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
}

function drawTop(predictions) {
  $("top5").tBodies[0].replaceChildren(...predictions.slice(0, 5).map((p) => {
    const row = document.createElement("tr");
    for (const text of [p.index, p.label, p.score.toFixed(4)]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  }));
  const select = $("target");
  select.replaceChildren(...[...predictions].sort((a, b) => a.index - b.index)
    .map((p) => new Option(`${p.index}: ${p.label}`, p.index)));
  const wanted = state.target !== null && predictions.some((p) => p.index === state.target);
  select.value = wanted ? state.target : predictions[0].index;
}

async function drawStrip(maps) {
  const rows = maps.layers.map((layer) => {
    const [channels, height = 1, width = 1] = layer.shape;
    const scale = height === 1 ? 12 : Math.max(1, Math.round(MAP_PX / height));
    const row = document.createElement("div");
    row.className = "layer";
    row.dataset.layer = layer.name;
    const name = document.createElement("div");
    name.className = "name";
    name.textContent = `${layer.name} ${layer.shape.join("x")}`;
    name.title = layer.aliases.length ? `also: ${layer.aliases.join(", ")}` : layer.name;
    const holder = document.createElement("div");
    holder.className = "maps";
    const img = picture(layer.png);
    img.alt = `${layer.name}: ${channels} channel maps, strongest first`;
    img.width = channels * width * scale;
    img.height = height * scale;
    img.addEventListener("click", (event) => {
      const tile = Math.min(channels - 1, Math.floor(event.offsetX / (width * scale)));
      openUnit(layer.name, layer.order[tile], null);
    });
    holder.append(img);
    row.append(name, holder);
    return [row, img];
  });
  $("strip").replaceChildren(...rows.map(([row]) => row));
  await Promise.all(rows.map(([, img]) => img.decode()));
}

function drawField(layer, position) {
  const canvas = $("field");
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  const field = layer && layer.receptive_field;
  if (!field || !position) return false;
  const k = canvas.width / $("input").naturalWidth;
  const top = field.offset[0] + position[0] * field.stride[0];
  const left = field.offset[1] + position[1] * field.stride[1];
  context.strokeStyle = "#0c0";
  context.lineWidth = 3;
  context.strokeRect(left * k, top * k, field.size[1] * k, field.size[0] * k);
  return true;
}

// -- a unit -----------------------------------------------------------------------------------

async function openUnit(layerName, channel, position) {
  state.unit = { layer: layerName, channel, position };
  state.retry = () => openUnit(layerName, channel, position);
  performance.clearMarks("channel-clicked");
  performance.mark("channel-clicked");
  for (const row of document.querySelectorAll(".layer")) {
    row.classList.toggle("chosen", row.dataset.layer === layerName);
  }
  const layer = state.result && state.result.layers.find((l) => l.name === layerName);
  try {
    const answer = await call(`${modelPath()}/explain`, {
      body: state.image,
      query: { method: state.rule, layer: layerName, channel, position: position && position.join(",") },
    });
    const img = $("projection");
    img.src = `data:image/png;base64,${answer.png}`;
    await img.decode();
    performance.measure("projection-drawn", "channel-clicked");
    const [y, x] = answer.unit_position;
    const boxed = drawField(layer, layer && layer.shape.length === 3 ? [y, x] : null);
    $("unit").hidden = false;
    $("unit-title").textContent = `${layerName}, channel ${channel}`;
    $("projection-caption").textContent =
      `unit (${y}, ${x}): activation ${answer.unit_activation.toPrecision(4)}; ` +
      `${state.rule.replace("-unit", "")} projection` +
      (boxed ? "; its receptive field is boxed on the input" : "");
    img.dataset.unit = `${layerName}/${channel}/${y},${x}`;
    state.retry = null;
    updateLink();
    await showLinked(layerName, channel);
  } catch (error) {
    fail(error, `Channel ${channel} of ${layerName} could not be projected`);
  }
}

// A linked job's results (`cnnzoo serve --results DIR`): the unit's dataset top-k with their
// projections and its activation-maximisation image, when the job analysed this unit.
let manifest;
async function showLinked(layer, channel) {
  const box = $("linked");
  box.hidden = true;
  if (page.results !== "1") return;
  if (manifest === undefined) {
    try { manifest = await call("results/manifest.json"); } catch (error) { manifest = null; }
  }
  if (!manifest || (manifest.model && manifest.model.name !== state.model)) return;
  const parts = [];
  for (const section of manifest.analyses) {
    const rows = section.tables && section.tables[layer] && section.tables[layer][String(channel)];
    if (!rows) continue;
    const figure = `results/${section.id}/${layer}/channel_${String(channel).padStart(4, "0")}.png`;
    const caption = section.kind === "max-activations"
      ? `the dataset's ${rows.length} strongest activations (${section.title}): projections | patches`
      : `the input that maximises this unit (${section.title})`;
    parts.push(`<figure><img src="${figure}" alt="${caption}"><figcaption>${caption}</figcaption></figure>`);
  }
  if (!parts.length) return;
  box.innerHTML = parts.join("");
  box.hidden = false;
}

// -- the class view ---------------------------------------------------------------------------

async function classView(extra = []) {
  const target = Number($("target").value);
  state.target = target;
  const methods = ["guided-backprop", "grad-cam", "guided-grad-cam", ...extra];
  const cards = await Promise.all(methods.map(async (method) => {
    const figure = document.createElement("figure");
    figure.className = "card";
    try {
      const answer = await call(`${modelPath()}/explain`, {
        body: state.image, query: { method, target },
      });
      const img = picture(answer.png);
      img.alt = `${method} for class ${answer.label}`;
      await img.decode();
      const caption = document.createElement("figcaption");
      caption.textContent = `${method}: ${answer.label} (p = ${answer.score.toFixed(3)})`;
      figure.append(img, caption);
    } catch (error) {
      figure.textContent = `${method}: ${error.message}`;
    }
    return figure;
  }));
  $("classes").replaceChildren(...cards);
  updateLink();
}

// -- the address of a view ----------------------------------------------------------------------

function updateLink() {
  const params = new URLSearchParams();
  params.set("model", state.model);
  if (state.version) params.set("version", state.version);
  if (state.example) params.set("image", state.example);
  if (state.unit) {
    params.set("layer", state.unit.layer);
    params.set("channel", state.unit.channel);
    if (state.unit.position) params.set("position", state.unit.position.join(","));
    params.set("method", state.rule);
  }
  if (state.target !== null) params.set("target", state.target);
  const hash = `#${params}`;
  $("permalink").href = hash;
  history.replaceState(null, "", hash);
}

function readLink() {
  const params = new URLSearchParams(window.location.hash.slice(1));
  const channel = params.get("channel");
  if (params.get("layer") && channel !== null) {
    const position = params.get("position");
    state.unit = {
      layer: params.get("layer"), channel: Number(channel),
      position: position ? position.split(",").map(Number) : null,
    };
  }
  if (["deconvnet-unit", "guided-backprop-unit"].includes(params.get("method"))) {
    state.rule = params.get("method");
    document.querySelector(`input[name=rule][value="${state.rule}"]`).checked = true;
  }
  if (params.get("target") !== null) state.target = Number(params.get("target"));
  state.pinned = params.get("version") || "";
  return { model: params.get("model"), image: params.get("image") };
}

// -- wiring -----------------------------------------------------------------------------------

async function start() {
  $("pixel-limit").textContent = Number(page.maxPixels).toLocaleString("en");
  showExamples();
  const wanted = readLink();
  let models;
  try { models = await loadModels(); } catch (error) { fail(error, "The model list"); return; }
  if (!models.length) return;
  const model = models.includes(wanted.model) ? wanted.model : models[0];
  if (wanted.model && wanted.model !== model) say(`This server serves no model ${wanted.model}.`, true);
  await chooseModel(model);
  if (wanted.image) await useExample(wanted.image);
}

$("model").addEventListener("change", (event) => {
  state.unit = null;
  state.pinned = "";
  $("unit").hidden = true;
  chooseModel(event.target.value).catch((error) => fail(error, "The model"));
});
$("file").addEventListener("change", (event) => {
  readImageFile(event.target.files[0]);
  event.target.value = "";  // choosing the same file again runs it again
});
$("target").addEventListener("change", () => classView());
$("occlusion").addEventListener("click", () => classView(["occlusion"]));
for (const radio of document.querySelectorAll("input[name=rule]")) {
  radio.addEventListener("change", () => {
    state.rule = radio.value;
    if (state.unit) openUnit(state.unit.layer, state.unit.channel, state.unit.position);
  });
}
document.addEventListener("dragover", (event) => { event.preventDefault(); document.body.classList.add("dragging"); });
document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
document.addEventListener("drop", (event) => {
  event.preventDefault();
  document.body.classList.remove("dragging");
  readImageFile(event.dataTransfer.files[0]);
});
document.addEventListener("paste", (event) => {
  const item = [...event.clipboardData.items].find((i) => i.type.startsWith("image/"));
  if (item) readImageFile(item.getAsFile());
});
$("webcam").addEventListener("click", async () => {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: true });
    $("video").srcObject = stream;
    $("camera").hidden = false;
  } catch (error) {
    say(`The webcam is not available: ${error.message}`, true);
  }
});
$("snap").addEventListener("click", () => {
  const video = $("video");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => { state.example = ""; runImage(blob); }, "image/png");
});
$("camera-close").addEventListener("click", () => {
  for (const track of $("video").srcObject?.getTracks() || []) track.stop();
  $("camera").hidden = true;
});

start();
