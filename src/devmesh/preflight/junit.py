"""A `Report` as JUnit XML, as Jenkins, GitLab and the GitHub test-report actions read it.

`junit_xml` is pure (the report in, bytes out); `write_junit` puts them in a file, atomically.
"""

from __future__ import annotations

import os
import socket
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from devmesh.preflight.report import ERROR, FAILED, SKIPPED, Report


def junit_xml(report: Report, *, hostname: str | None = None) -> bytes:
    """`<testsuites><testsuite name="devmesh"><testcase ...>`: a failure, error or skipped element per
    check that did not pass, and a system-out for a pass with a note. `hostname` defaults to this host's."""
    totals = {
        "tests": str(len(report.results)),
        "failures": str(report.count(FAILED)),
        "errors": str(report.count(ERROR)),
        "skipped": str(report.count(SKIPPED)),
        "time": f"{report.elapsed():.3f}",
    }
    root = ET.Element("testsuites", {"name": "devmesh check", **totals})
    suite = ET.SubElement(
        root,
        "testsuite",
        {
            "name": "devmesh",
            **totals,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(report.timestamp)),
            "hostname": socket.gethostname() if hostname is None else hostname,
        },
    )
    for result in report.results:
        case = ET.SubElement(
            suite,
            "testcase",
            {"classname": result.classname, "name": result.name, "time": f"{result.time_s:.3f}"},
        )
        if result.outcome == FAILED:
            element = ET.SubElement(case, "failure", {"message": result.message, "type": "CheckFailed"})
            element.text = result.text()
        elif result.outcome == ERROR:
            element = ET.SubElement(case, "error", {"message": result.message, "type": "CheckError"})
            element.text = result.text()
        elif result.outcome == SKIPPED:
            ET.SubElement(case, "skipped", {"message": result.message})
        if result.note:
            ET.SubElement(case, "system-out").text = result.note
    ET.indent(root)
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True)) + b"\n"


def write_junit(path: Path, report: Report) -> None:
    """Write the report's JUnit XML to `path` (its folder created), replacing it in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(junit_xml(report))
    os.replace(temporary, path)
