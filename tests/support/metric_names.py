"""Every sample name the daemon's metrics registry can expose, for tests of files that query them."""

from __future__ import annotations

from teckochecker.metrics import Metrics

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}


def exported_sample_names() -> set[str]:
    """Every sample name a fresh Metrics() registry can expose, labelled children or not."""
    metrics = Metrics()
    metrics.observe_jobs([])
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names
