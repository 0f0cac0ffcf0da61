"""Parses OpenMetrics text (stdin) with the Prometheus project's own parser
and prints every sample as JSON: {"name{label=value,...}": value}.
Fails (exit 1, with the parser's error) on text that is not valid."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
print(json.dumps(out))
