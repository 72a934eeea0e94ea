"""Packages and bundles: uploads, SCORM attempts, export and import."""
