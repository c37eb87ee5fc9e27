"""Cases of tests/adversarial/test_adv_inputs_lists.py by class and outcome, from pytest's junit XML:

    pytest tests/adversarial/test_adv_inputs_lists.py --junitxml=r.xml && python tests/adversarial/inputs_table.py r.xml
"""
import collections
import sys
import xml.etree.ElementTree as ET

CLASSES = ["tar_members", "tar_size", "compressed", "empty", "lists", "order", "formats", "cache", "confinement"]
table = collections.defaultdict(collections.Counter)
for case in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    name = case.get("name").removeprefix("test_")
    cls = next((c for c in CLASSES if name.startswith(c)), "other")
    outcome = ("failed" if case.find("failure") is not None or case.find("error") is not None
               else "skipped" if case.find("skipped") is not None else "passed")
    table[cls][outcome] += 1
print("| class | cases | held (passed) | failed | skipped |")
print("|---|---|---|---|---|")
for cls in [*CLASSES, "other"]:
    if cls in table:
        c = table[cls]
        print(f"| {cls} | {sum(c.values())} | {c['passed']} | {c['failed']} | {c['skipped']} |")
total = collections.Counter()
for c in table.values():
    total.update(c)
print(f"| **all** | {sum(total.values())} | {total['passed']} | {total['failed']} | {total['skipped']} |")
