// Safe Denoiser: on page load, each accordion (txt2img, img2img) asks the server for the signed-in
// user's default preset and whether the operator's policy hides it; the answer comes back through
// the "Load my default" button's event, so the page never decides anything itself.
function safeDenoiserLoadDefaults() {
    for (const tab of ["txt2img", "img2img"]) {
        const button = gradioApp().querySelector(`#script_${tab}_safe_denoiser_load_default`);
        if (button) button.click();
    }
}

onUiLoaded(safeDenoiserLoadDefaults);
