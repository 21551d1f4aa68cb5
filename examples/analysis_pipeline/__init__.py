"""A document analysis process on Skiplock: see README.md beside this file."""
