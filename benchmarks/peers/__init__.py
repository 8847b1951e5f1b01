"""The peers' side of rows that run in another environment, each a module run as
`python -m benchmarks.peers.<name> ...` by that environment's interpreter (see
`benchmarks.child.run_module`). They import only what that environment has: never `interp`."""
