"""Uploads, jobs and results: see README.md beside this file."""
