"""Prints a list of cc/sources.bzl space-separated (for the Makefile): python3 cc/sources.py NAME."""
import os
import sys

scope = {}
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "sources.bzl")) as f:
    exec(compile(f.read(), "sources.bzl", "exec"), scope)  # plain list assignments
print(" ".join(scope[sys.argv[1]]))
