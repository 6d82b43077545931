"""Parses Prometheus text exposition from stdin with prometheus_client's own parser
(tests/it/metrics.rs), and prints every family as JSON:

    {"families": [{"name", "type", "documentation", "samples": [{"name", "labels", "value"}]}]}

A body the parser refuses makes it exit non-zero with the parser's error.
"""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

text = sys.stdin.read()
families = []
for family in text_string_to_metric_families(text):
    families.append(
        {
            "name": family.name,
            "type": family.type,
            "documentation": family.documentation,
            "samples": [
                {"name": s.name, "labels": s.labels, "value": s.value} for s in family.samples
            ],
        }
    )
print(json.dumps({"families": families}))
