"""aggregate: statistics over records without revealing any record.

Input: JSON lines, each {"group": str, "value": number}. Output (JSON): per group and overall
{"count", "sum", "mean", "min", "max"}; groups with fewer than MIN_GROUP records are folded
into "other", so no single record can be read back from a small group.
"""

import json

MIN_GROUP = 3


def _stats(values):
    return {"count": len(values), "sum": sum(values), "mean": sum(values) / len(values),
            "min": min(values), "max": max(values)}


def run(data: bytes, zone) -> bytes:
    groups = {}
    for number, line in enumerate(data.decode().splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        value = record["value"]
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"line {number}: value must be a number")
        groups.setdefault(str(record.get("group", "all")), []).append(value)
    if not groups:
        raise ValueError("no records")
    every = [v for values in groups.values() for v in values]
    shown = {}
    other = []
    for name, values in sorted(groups.items()):
        if len(values) >= MIN_GROUP:
            shown[name] = _stats(values)
        else:
            other.extend(values)
    if len(other) >= MIN_GROUP:
        shown["other"] = _stats(other)
    return json.dumps({"overall": _stats(every), "groups": shown}, sort_keys=True).encode()
