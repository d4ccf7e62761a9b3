"""The web dashboard: the bundle built from ui/ (in static/, shipped with the package) served
at /ui/. Its client-side routes (/ui/, /ui/jobs/{id}, /ui/upstream) all get index.html."""
