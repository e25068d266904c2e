"""Read Prometheus metrics as the scraper does: parsed by prometheus_client.parser, not matched as text."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def sample_value(exposition: str, sample: str, **labels: str) -> float | None:
    """The value of the sample named `sample` with exactly these labels, or None when the scrape has no such sample."""
    for family in text_string_to_metric_families(exposition):
        for found in family.samples:
            if found.name == sample and found.labels == labels:
                return found.value
    return None


def family_names(exposition: str) -> set[str]:
    """The metric families in a scrape; parsing all of it also proves the exposition is well formed."""
    return {family.name for family in text_string_to_metric_families(exposition)}
