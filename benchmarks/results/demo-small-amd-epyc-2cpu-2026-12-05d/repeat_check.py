"""python repeat_check.py A.json B.json: two default demos of the same data on this VM at
different commits. Compares every number in the two records except timings, the environment, the
fingerprint and paths; prints the count of equal numbers and every difference.

demo-eccf8c9.json vs demo.json (e02f7cd): e02f7cd changed only how the data fingerprint treats the
segmentation set's code digest, so `demo_goals.py --compare` calls those two different data.
demo.json vs demo-dc2e49a.json: commits that changed documentation and a comment only;
`demo_goals.py --compare` finds the same data there (compare-dc2e49a.txt).
"""
import json
import sys

first, second = (json.load(open(path)) for path in sys.argv[1:3])
equal, different = 0, []


def walk(a, b, where):
    global equal
    if isinstance(a, dict):
        for key in a:
            walk(a[key], b.get(key) if isinstance(b, dict) else None, f"{where}/{key}")
    elif isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            different.append(where)
            return
        for i, (x, y) in enumerate(zip(a, b)):
            walk(x, y, f"{where}[{i}]")
    elif isinstance(a, (int, float)) and not isinstance(a, bool) and "seconds" not in where:
        if a == b:
            equal += 1
        else:
            different.append(f"{where}: {a} != {b}")


for key in first:
    if key not in ("timings", "environment", "data_fingerprint"):
        walk(first[key], second.get(key), key)
print(json.dumps({"equal_numbers": equal, "differences": different,
                  "commits": [r["environment"]["package"]["commit"] for r in (first, second)],
                  "training_table_fingerprint_equal": first["data_fingerprint"]["train"] == second["data_fingerprint"]["train"]}))
