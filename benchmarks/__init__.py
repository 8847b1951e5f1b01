"""The toolkit against what a user would run instead: `interp bench`'s benchmarks.

This package lives beside `interp` in the repository checkout and is not installed with the
library (`[tool.setuptools.packages.find]` includes `interp*` only): run it from the checkout's
root (`make bench`, or `interp bench` there). Each row measures both sides back to back in one
run; `benchmarks.run` lists them and writes the JSON and markdown results.

Nothing here is imported at package level: `benchmarks.peers` modules also run under other
interpreters (nanoGCG's own environment), which have neither `interp` nor its dependencies.
"""
