"""Fails when a JUnit report holds a skip whose reason matches no line of allowed-skips.txt."""

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

allowed = [re.compile(line.strip()) for line in (Path(__file__).with_name("allowed-skips.txt")).read_text().splitlines()
           if line.strip() and not line.startswith("#")]
tree = ET.parse(sys.argv[1])
bad = []
for case in tree.iter("testcase"):
    for skipped in case.findall("skipped"):
        reason = skipped.get("message", "")
        if not any(p.search(reason) for p in allowed):
            bad.append(f"{case.get('classname')}::{case.get('name')}: {reason}")
total = sum(1 for _ in tree.iter("testcase"))
if total == 0:
    sys.exit(f"{sys.argv[1]}: no test ran")
if bad:
    sys.exit("skipped for a reason outside .ci/allowed-skips.txt:\n  " + "\n  ".join(bad))
print(f"{sys.argv[1]}: {total} tests, no unexpected skips")
