import { defineConfig } from "vite";

// The bundle is served by the service at /ui/ and shipped inside the Python package.
export default defineConfig({
  base: "/ui/",
  build: {
    outDir: "../app/ui/static",
    emptyOutDir: true,
    chunkSizeWarningLimit: 1000,
  },
});
