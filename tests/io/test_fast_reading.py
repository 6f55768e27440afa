"""The bulk reading path: numbers exactly as float() and int() read them, the numpy tokenizer
against the line-by-line one, and files that take the slow path reading the same."""
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nlls.io import FormatError, read_bal, read_g2o
from nlls.io._numbers import PAD, parse_numbers
from nlls.io._text import Source, scan_plain, scan_text

EDGE_CASES = [
    "0", "-0", "+0", "0.0", "-0.0", "1", "-1", "+7", "007", "1.", ".5", "-.5", "+.5e-3", ".", "-",
    "+", "e5", "1e", "1e+", "1e-", "1e5", "1E5", "1e+05", "1e-05", "-1.5E-3", "1.5e3.2", "1ee5",
    "1e5e", "+-1", "1+2", "1-", "--1", "1..2", "1.2.3", "inf", "-inf", "nan", "NaN", "Infinity",
    "1_000", "1_0.5", "0x10", "1,5", "1e400", "1e-400", "1e999", "1e1000", "9" * 19, "9" * 20,
    "1" * 24, "1" * 25, "0." + "0" * 20 + "1", "0.0044153676019036718", "399.99999999999994",
    "9007199254740993", "9007199254740992", "9007199254740995", "18446744073709551615",
    "-9223372036854775808", "9223372036854775807", "9223372036854775808", "4.9406564584124654e-324",
    "1.7976931348623157e308", "2.2250738585072014e-308", "1e22", "1e23", "1e-22", "1e-23",
    "123456789012345678e-27", "123456789012345678e27", "0.1", "0.30000000000000004",
    "1.0000000000000002", "5e-1", "-0e0", "00000000000000000000001", "1e007", "1e0007",
    "E0000000000000000000.", "1e5.", "1.e5.", ".e1", "-e-", "1e-0000000000000000000005",
]


def _parse(tokens, integers=False):
    data = bytes(PAD) + b" ".join(t.encode() for t in tokens) + bytes(PAD)
    lengths = np.array([len(t.encode()) for t in tokens], dtype=np.int64)
    starts = PAD + np.concatenate([[0], np.cumsum(lengths + 1)[:-1]]).astype(np.int64)
    return parse_numbers(np.frombuffer(data, np.uint8), starts, starts + lengths, integers)


def _python(token, integers):
    try:
        value = int(token) if integers else float(token)
    except ValueError:
        return None
    if integers and not -2**63 <= value < 2**63:
        return None
    return value


def _check_agrees(tokens):
    for integers in (False, True):
        values, ok = _parse(tokens, integers)
        assert values.dtype == (np.int64 if integers else np.float64)
        for token, value, fast in zip(tokens, values.tolist(), ok.tolist()):
            expected = _python(token, integers)
            if fast:  # converted here: exactly what Python reads, signed zeros included
                assert expected is not None, token
                assert value == expected or (math.isnan(value) and math.isnan(expected)), token
                assert math.copysign(1, value) == math.copysign(1, expected), token


def test_edge_cases_agree_with_python():
    _check_agrees(EDGE_CASES)
    values, ok = _parse(["0.5", "-12.25e2", "7", "1e-05", "-0"])
    assert ok.all() and values.tolist() == [0.5, -1225.0, 7.0, 1e-05, -0.0]
    assert math.copysign(1, values[-1]) == -1


def test_common_forms_are_converted_in_bulk():
    rng = random.Random(3)
    tokens = []
    for _ in range(3000):
        x = rng.uniform(-1e4, 1e4) * 10.0 ** rng.randint(-12, 12)
        tokens += [repr(x), f"{x:.17g}", f"{x:.16e}", f"{x:.6g}", f"{x:g}", f"{x:.3f}"]
    values, ok = _parse(tokens)
    assert ok.mean() > 0.99  # all but the rare long-double midpoints and 25-character tokens
    np.testing.assert_array_equal(values[ok], [float(t) for t, o in zip(tokens, ok) if o])


def test_midpoints_are_left_to_float():
    # 2**53 + 1 lies half-way between two doubles: the long double result cannot decide it
    values, ok = _parse(["9007199254740993", "9007199254740995e0"])
    assert not ok.any()


def test_integers():
    tokens = ["0", "-5", "+12", "007", "123456789012345678", "1234567890123456789", "1.0", "1e3"]
    values, ok = _parse(tokens, integers=True)
    assert ok.tolist() == [True, True, True, True, True, False, False, False]
    assert values[:5].tolist() == [0, -5, 12, 7, 123456789012345678]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="0123456789.eE+-_xn", min_size=1, max_size=26), min_size=1,
                max_size=40))
def test_any_token_agrees_with_python(tokens):
    _check_agrees(tokens)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=30),
       st.sampled_from(["{!r}", "{:.17g}", "{:.16e}", "{:.9E}", "{:.3f}", "{:.1e}"]))
def test_formatted_floats_agree_with_python(numbers, form):
    _check_agrees([form.format(x) for x in numbers])


def _scanned(scanned):
    buffer, num_lines, (starts, ends), (first, count, line) = scanned
    words = [bytes(buffer[s:e]).decode() for s, e in zip(starts, ends)]
    return num_lines, words, first.tolist(), count.tolist(), line.tolist()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["EDGE2", "1.5", "#", "# c", "-2", " ", "  ", "\t", "\n", "\r\n",
                                 "\n\n", "x#y", "#1"]), max_size=40))
def test_numpy_tokenizer_matches_line_by_line(pieces):
    text = "".join(pieces)
    plain = scan_plain(text.encode())
    assert plain is not None
    assert _scanned(plain) == _scanned(scan_text(text))


def test_other_text_takes_the_line_by_line_path():
    for data in ("a\rb", "a\x0bb", "caf\u00e9 1", "a\u2028b", "a\x1cb\x1fc"):
        assert scan_plain(data.encode()) is None
    num_lines, words, _, _, line = _scanned(scan_text("VERTEX \u00e9 1\u2028EDGE 2\x1f3\n"))
    assert (num_lines, words, line) == (2, ["VERTEX", "\u00e9", "1", "EDGE", "2", "3"], [1, 2])


G2O = ("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1.0000000000000002 -0.0 0.5\n"
       "EDGE_SE2 0 1 1 0 0.5 1 0 0 1 0 1\n")


def test_unusual_numbers_and_slow_path_files_read_the_same(tmp_path):
    plain = tmp_path / "plain.g2o"
    plain.write_text(G2O)
    variants = {
        "crlf.g2o": G2O.replace("\n", "\r\n").encode(),
        "comments.g2o": ("# caf\u00e9\n" + G2O).encode(),  # not ASCII: the line-by-line path
        "forms.g2o": G2O.replace("1.0000000000000002", "1.00000000000000020000000")
        .replace("0.5 1 0 0", "+.5e0 1_0 0 0").replace("EDGE_SE2 0 1 1 0", "EDGE_SE2 0 1 1E0 0")
        .encode(),
    }
    reference = read_g2o(plain)
    for name, data in variants.items():
        path = tmp_path / name
        path.write_bytes(data)
        graph = read_g2o(path)
        assert np.array_equal(graph.vertex_ids, reference.vertex_ids)
        assert graph.poses.equal(reference.poses), name
        expected = reference.edges.information.clone()
        if name == "forms.g2o":
            expected[0, 0, 0] = 10.0
        assert graph.edges.information.equal(expected), name
        assert graph.edges.measurements.equal(reference.edges.measurements), name


def test_errors_name_the_right_line_on_every_path(tmp_path):
    bad = G2O + "\n# comment\n\nEDGE_SE2 1 0 1 0 zz 1 0 0 1 0 1\n"
    for name, data in (("lf.g2o", bad.encode()), ("crlf.g2o", bad.replace("\n", "\r\n").encode()),
                       ("utf8.g2o", ("# \u00e9\n" + bad).encode())):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(FormatError) as caught:
            read_g2o(path)
        line = 7 if name != "utf8.g2o" else 8
        assert str(caught.value) == f"{path}:{line}: EDGE_SE2: field 'dtheta' is 'zz', expected a number"


def test_source_records(tmp_path):
    path = tmp_path / "r.g2o"
    path.write_text("  # x\nA 1 2\n\n#B\nC\tD   \n")
    source = Source(path)
    assert source.num_lines == 5 and source.num_records == 2
    assert source.lines == [(2, ["A", "1", "2"]), (5, ["C", "D"])]
    assert source.first_word_is("A").tolist() == [True, False]


def test_bal_parameters_in_any_layout(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("1 1 1\n0 0 1.5 -2\n# cameras\n0.1 0.2 0.3 1 2 3 500 1e-05 0 1 2 3\n")
    problem = read_bal(path)
    assert problem.cameras.tolist() == [[0.1, 0.2, 0.3, 1, 2, 3, 500, 1e-05, 0]]
    assert problem.points.tolist() == [[1, 2, 3]] and problem.measurements.tolist() == [[1.5, -2]]
    path.write_text("1 1 1\n0 0 1.5 -2\n0.1 0.2 0.3 1 2 3 500 1e-05 0\n1 inf 3\n")
    with pytest.raises(FormatError, match=r"p.txt:4: camera/point parameter 'inf' is not a finite"):
        read_bal(path)


BAL = "2 2 3\n0 0 1.5 -2\n1 1 3e-1 4\n1 0 -7.25 8\n" + "\n".join(
    f"{0.1 * k:.17g}" for k in range(2 * 9 + 2 * 3)) + "\n"
TORO = "VERTEX2 0 0 0 0\nVERTEX2 1 1 0 0.5\nEDGE2 0 1 1 0 0.5 1 0 1 1 0 0\nEQUIV 0 1\n"
PIECES = ["0", "1", "7", "-", ".", "e", "E", "+", " ", "\t", "\n", "\r\n", "#", "x", "12.5e-3",
          "VERTEX_SE2", "EDGE2", "nan", "1_0", "\u00e9", "", ""]


def _outcome(path):
    """The result of reading ``path``, comparable between the two tokenizers."""
    from nlls.io import read

    try:
        problem = read(path)
    except FormatError as error:
        return "error", str(error)
    if hasattr(problem, "cameras"):
        return "bal", problem.cameras.tolist(), problem.points.tolist(), problem.observations.tolist()
    return ("graph", problem.vertex_ids.tolist(), problem.poses.tolist(),
            problem.edges.measurements.tolist(), problem.edges.information.tolist(), problem.notes)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([G2O, TORO, BAL]), st.lists(st.tuples(st.integers(0, 10**6),
                                                               st.integers(0, 3),
                                                               st.sampled_from(PIECES)), max_size=4))
def test_mutated_files_read_the_same_on_both_paths(tmp_path_factory, text, edits):
    """A mutated file never crashes, and the numpy path reads it exactly as the line-by-line one:
    the same problem, or the same error at the same line."""
    import nlls.io._text as text_module

    for position, removed, inserted in edits:
        at = position % (len(text) + 1)
        text = text[:at] + inserted + text[at + removed:]
    path = tmp_path_factory.mktemp("fuzz") / "file.txt"
    path.write_bytes(text.encode("utf-8"))
    fast = _outcome(path)
    plain = text_module.scan_plain
    text_module.scan_plain = lambda data: None  # every file the line-by-line way
    try:
        slow = _outcome(path)
    finally:
        text_module.scan_plain = plain
    assert fast == slow
