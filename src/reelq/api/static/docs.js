// Starts Swagger UI on /docs (api/docs.py). A file of its own: the page's CSP allows no inline script.
"use strict";
window.addEventListener("DOMContentLoaded", function () {
  window.ui = SwaggerUIBundle({
    url: new URL("openapi.json", document.baseURI).href,
    dom_id: "#swagger-ui",
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    // The page runs sandboxed in an opaque origin (api/docs.py), so "Try it out" could not reach the
    // API anyway; no validator badge (it would call a third party); no ?url= / ?configUrl=.
    supportedSubmitMethods: [],
    validatorUrl: null,
    queryConfigEnabled: false,
  });
});
