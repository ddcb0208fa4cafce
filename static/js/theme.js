// The header's theme toggle (templates/base.html, chat/themes.py), on every page: a change
// applies at once and is saved for the user with a POST; without script the form's Apply
// button does the same with a reload.

const form = document.getElementById("theme-form");
const select = document.getElementById("theme-select");
const applyButton = document.getElementById("theme-apply");
const root = document.documentElement;
const colorSchemeMeta = document.querySelector('meta[name="color-scheme"]');
const codeStyleLight = document.getElementById("code-style-light");
const codeStyleDark = document.getElementById("code-style-dark");

// The same table as chat/themes.py's CODE_STYLE_MEDIA.
const CODE_STYLE_MEDIA = {
  system: ["not all and (prefers-color-scheme: dark)", "(prefers-color-scheme: dark)"],
  light: ["all", "not all"],
  dark: ["not all", "all"],
};
const COLOR_SCHEMES = { system: "light dark", light: "light", dark: "dark" };

function applyTheme(theme) {
  root.dataset.theme = theme;
  colorSchemeMeta?.setAttribute("content", COLOR_SCHEMES[theme]);
  [codeStyleLight.media, codeStyleDark.media] = CODE_STYLE_MEDIA[theme];
}

async function saveTheme(theme) {
  const response = await fetch(form.action, {
    method: "POST",
    body: new FormData(form),
    headers: { Accept: "application/json" },
    credentials: "same-origin",
  });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return (await response.json()).theme === theme;
}

async function onThemeChange() {
  const previous = root.dataset.theme;
  const theme = select.value;
  if (!(theme in CODE_STYLE_MEDIA)) return;
  applyTheme(theme);
  form.dataset.state = "saving";
  try {
    if (!(await saveTheme(theme))) throw new Error("not saved");
    form.dataset.state = "saved";
    select.removeAttribute("title");
  } catch {
    // Nothing lost, nothing half-done: back to the theme that is saved.
    applyTheme(previous);
    select.value = previous;
    form.dataset.state = "error";
    select.title = "The theme could not be saved; try again.";
  }
}

function init() {
  if (!form || !select) return;
  applyButton.hidden = true;
  select.addEventListener("change", onThemeChange);
}

init();
