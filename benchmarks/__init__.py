"""The project's benchmarks: one module per benchmark, each registering itself with
``smallfoot.bench.register_benchmark`` (and its claims with ``register_claims``).

They live in the checkout, not in the installed package: ``smallfoot bench NAME`` imports
every module of this directory. A benchmark that trains declares ``GridRow`` rows and runs
them with ``smallfoot.bench.grid.run_grid`` (the path ``smallfoot train`` takes); below the
run level it calls the library's public API only.
"""
