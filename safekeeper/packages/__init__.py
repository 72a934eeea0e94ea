"""Zip packages (SCORM 1.2, SCORM 2004, plain HTML): validation and the launch page.

``validate`` checks a zip against the hazard list and the budgets before anything of it
is stored; ``manifest`` reads a SCORM ``imsmanifest.xml`` without trusting it.
"""
