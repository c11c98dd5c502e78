"""The JUnit XML of a report, read back with ElementTree: structure, counts, and escaping."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from devmesh.preflight.junit import junit_xml, write_junit
from devmesh.preflight.report import ERROR, FAILED, SKIPPED, CheckResult, Report

NASTY = "a <tag> & \"quotes\" 'too'"


def sample() -> Report:
    report = Report(timestamp=0.0)
    report.add(CheckResult("devmesh.config", "devmesh.toml", message="valid", time_s=0.0042))
    report.add(
        CheckResult(
            "devmesh.smoke",
            "api GET http://api.localhost:7080/health",
            FAILED,
            message=f"answered 500: {NASTY}",
            details="<html>&nbsp;</html>",
            hint="`devmesh logs api`",
            time_s=1.5,
        )
    )
    report.add(CheckResult("devmesh.smoke", "web", SKIPPED, message="not checked: <web> is not healthy"))
    report.add(CheckResult("devmesh.check", "internal", ERROR, message="check itself failed: KeyError"))
    report.add(CheckResult("devmesh.smoke", "teapot", message="418 from local/teapot", note="418 & <short>"))
    return report


def test_structure_and_counts() -> None:
    data = junit_xml(sample(), hostname="ci-runner")
    assert data.startswith(b"<?xml version='1.0' encoding='utf-8'?>")
    assert data.endswith(b"\n")
    root = ET.fromstring(data)
    assert root.tag == "testsuites" and root.get("name") == "devmesh check"
    (suite,) = list(root)
    assert suite.tag == "testsuite"
    assert suite.get("name") == "devmesh" and suite.get("hostname") == "ci-runner"
    for element in (root, suite):
        assert (
            element.get("tests"),
            element.get("failures"),
            element.get("errors"),
            element.get("skipped"),
        ) == (
            "5",
            "1",
            "1",
            "1",
        )
        assert re.fullmatch(r"\d+\.\d{3}", element.get("time", ""))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", suite.get("timestamp", ""))
    cases = list(suite)
    assert [case.tag for case in cases] == ["testcase"] * 5
    assert [(case.get("classname"), case.get("time")) for case in cases] == [
        ("devmesh.config", "0.004"),
        ("devmesh.smoke", "1.500"),
        ("devmesh.smoke", "0.000"),
        ("devmesh.check", "0.000"),
        ("devmesh.smoke", "0.000"),
    ]
    passed, failed, skipped, error, noted = cases
    assert list(passed) == []
    assert [child.tag for child in failed] == ["failure"]
    assert [child.tag for child in skipped] == ["skipped"]
    assert [child.tag for child in error] == ["error"]
    assert [child.tag for child in noted] == ["system-out"]

    failure = failed.find("failure")
    assert failure is not None and failure.get("type") == "CheckFailed"
    assert failure.text == f"answered 500: {NASTY}\n<html>&nbsp;</html>\nWhat to do: `devmesh logs api`"
    error_element = error.find("error")
    assert error_element is not None and error_element.get("type") == "CheckError"
    assert error_element.get("message") == "check itself failed: KeyError"
    skipped_element = skipped.find("skipped")
    assert (
        skipped_element is not None and skipped_element.get("message") == "not checked: <web> is not healthy"
    )
    assert skipped_element.text is None


def test_messages_are_escaped_and_read_back_intact() -> None:
    data = junit_xml(sample(), hostname="h")
    assert b"<tag>" not in data and b"<html>" not in data and b"<short>" not in data
    assert b"&lt;tag&gt; &amp; &quot;quotes&quot;" in data  # in the message attribute
    suite = ET.fromstring(data)[0]
    failure = suite[1].find("failure")
    assert failure is not None and failure.get("message") == f"answered 500: {NASTY}"
    assert suite[1].get("name") == "api GET http://api.localhost:7080/health"
    out = suite[4].find("system-out")
    assert out is not None and out.text == "418 & <short>"


def test_an_empty_report_is_a_valid_document() -> None:
    root = ET.fromstring(junit_xml(Report(), hostname="h"))
    assert root.get("tests") == "0" and list(root[0]) == []


def test_write_junit_creates_the_folder_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "reports" / "devmesh-junit.xml"
    write_junit(target, sample())
    assert ET.parse(target).getroot()[0].get("tests") == "5"
    assert sorted(path.name for path in target.parent.iterdir()) == ["devmesh-junit.xml"]
