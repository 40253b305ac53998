"""Prints the README's command block marked `<!-- ci:NAME -->` (CI runs it verbatim)."""
import os
import sys

readme = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md")).read()
marker = f"<!-- ci:{sys.argv[1]} -->"
if marker not in readme:
    sys.exit(f"README.md has no block marked {marker}")
print(readme.split(marker, 1)[1].split("```bash", 1)[1].split("```", 1)[0].strip())
