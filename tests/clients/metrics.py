"""Parses a scrape of pb's /metrics (stdin) with the prometheus_client
package's OpenMetrics parser, which is strict (it rejects anything the
format forbids, a missing `# EOF` included), and prints it as JSON:
{family: {"type": T, "samples": [{"name", "labels", "value"}, ...]}}.
Used by tests/tests/metrics.rs."""

import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    out[family.name] = {
        "type": family.type,
        "samples": [
            {"name": s.name, "labels": s.labels, "value": s.value}
            for s in family.samples
        ],
    }
print(json.dumps(out))
