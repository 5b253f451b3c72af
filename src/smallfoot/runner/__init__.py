"""Orchestration above the method registry: run a configuration end to end
(:func:`run_training`, the run directory), meter a method's configured training step
(:func:`method_step_memory`, what ``smallfoot memory --method`` shows) and compare methods
(:func:`compare_methods`). The command line, the benchmarks and the data-parallel launcher
call these; nothing below this layer imports them."""

from smallfoot.runner.compare import compare_methods
from smallfoot.runner.run import (
    load_run_data,
    resolve_device,
    resume_config,
    run_summary,
    run_training,
    seed_everything,
)
from smallfoot.runner.step import method_step_memory

__all__ = [
    "compare_methods",
    "load_run_data",
    "method_step_memory",
    "resolve_device",
    "resume_config",
    "run_summary",
    "run_training",
    "seed_everything",
]
