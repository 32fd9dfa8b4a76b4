"""The web console (``/console``): server-rendered pages over services/ for the humans in the loop."""
