"""adamscope: post-hoc forensics of Adam optimizer state in training checkpoints.

    import adamscope
    t = adamscope.analyze("run/")            # Tables: polars DataFrames + the manifest, in memory
    t.layers.filter(t.layers["stage"] == "primed")
    t = adamscope.analyze("run/", out="out/")  # the same, also written (as `adamscope analyze -o`)
    t = adamscope.load("out/")               # read back
    adamscope.inspect("run/")                # format, step, groups, tensors; no tensor data read
    adamscope.figures.write_figures("figs/", t); adamscope.report.write_report(t, "report.html")
    adamscope.repair.repair("run/step_360/ckpt.pt", "fixed/", reset_layers="primed")  # docs/repair.md

Names are imported on first use, so `import adamscope` (and `adamscope --help`) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adamscope._version import __version__

# public name -> module that defines it
_EXPORTS = {
    "analyze": "adamscope.api",
    "load": "adamscope.api",
    "inspect": "adamscope.api",
    "Tables": "adamscope.tables.model",
    "Inspection": "adamscope.pipeline.inspect",
    "AnalyzeOptions": "adamscope.config",
    "StatsConfig": "adamscope.config",
    "StageThresholds": "adamscope.config",
    "ReaderOptions": "adamscope.config",
    "AdamscopeError": "adamscope.errors",
    "write_report": "adamscope.report.render",
}
_SUBMODULES = (
    "figures",
    "report",
    "forensics",
    "readers",
    "stats",
    "tables",
    "logs",
    "sim",
    "monitor",
    "repair",
)

__all__ = ["__version__", *_EXPORTS, *_SUBMODULES]

if TYPE_CHECKING:
    from adamscope import (  # noqa: F401
        figures,
        forensics,
        logs,
        monitor,
        readers,
        repair,
        report,
        sim,
        stats,
        tables,
    )
    from adamscope.api import analyze, inspect, load  # noqa: F401
    from adamscope.config import AnalyzeOptions, ReaderOptions, StageThresholds, StatsConfig  # noqa: F401
    from adamscope.errors import AdamscopeError  # noqa: F401
    from adamscope.pipeline.inspect import Inspection  # noqa: F401
    from adamscope.report.render import write_report  # noqa: F401
    from adamscope.tables.model import Tables  # noqa: F401


def _module(name: str) -> Any:
    """The module behind a public name, by plain import statements (no importlib: nothing here
    imports a module named by data). `import adamscope.x` binds x on this package, so the
    lookups below never come back to `__getattr__`."""
    import sys

    if name == "monitor":
        import adamscope.monitor  # noqa: F401
    elif name == "repair":
        import adamscope.repair  # noqa: F401
    elif name in ("figures", "write_report", "report"):
        import adamscope.figures
        import adamscope.report.render  # noqa: F401
    elif name in ("forensics", "readers", "stats", "logs", "sim", "tables", "Tables"):
        import adamscope.forensics
        import adamscope.logs
        import adamscope.readers
        import adamscope.sim
        import adamscope.stats
        import adamscope.tables.model  # noqa: F401
    else:
        import adamscope.api
        import adamscope.config
        import adamscope.errors
        import adamscope.pipeline.inspect  # noqa: F401
    if name in _SUBMODULES:
        return sys.modules[f"adamscope.{name}"]
    target = {"write_report": "adamscope.report.render", "Tables": "adamscope.tables.model"}
    return sys.modules[target.get(name, _EXPORTS[name])]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS and name not in _SUBMODULES:
        raise AttributeError(f"module 'adamscope' has no attribute {name!r}")
    mod = _module(name)
    value = mod if name in _SUBMODULES else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
