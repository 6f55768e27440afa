"""Malformed files: every error is a FormatError (a ValueError) naming the file and the line."""
import pytest

from nlls.io import FormatError, MissingFileError, read, read_bal, read_g2o, read_toro

V2 = "VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1 0 0\n"
E2 = "EDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\n"
T2 = "VERTEX2 0 0 0 0\nVERTEX2 1 1 0 0\n"
V3 = "VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\nVERTEX_SE3:QUAT 1 1 0 0 0 0 0 1\n"
INFO3 = " ".join(["1 0 0 0 0 0", "1 0 0 0 0", "1 0 0 0", "1 0 0", "1 0", "1"])

# (reader, file name, content, line, fragment of the message)
CASES = [
    ("read_g2o", "fields.g2o", V2 + "EDGE_SE2 0 1 1 0 0 1 0 0 1 0\n", 3, "EDGE_SE2 needs 11 fields"),
    ("read_g2o", "vertex_fields.g2o", "VERTEX_SE2 0 0 0\n" + E2, 1, "VERTEX_SE2 needs 4 fields"),
    ("read_g2o", "not_a_number.g2o", "VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1 abc 0\n" + E2, 2,
     "field 'y' is 'abc', expected a number"),
    ("read_g2o", "float_id.g2o", "VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1.5 1 0 0\n" + E2, 2,
     "field 'id' is '1.5', expected an integer"),
    ("read_g2o", "nan.g2o", V2 + "EDGE_SE2 0 1 1 0 nan 1 0 0 1 0 1\n", 3, "'dtheta' is 'nan'"),
    ("read_g2o", "tag.g2o", V2 + "VERTEX_XY 5 1 1\n" + E2, 3,
     "unknown record 'VERTEX_XY': g2o files hold VERTEX_SE2, EDGE_SE2, VERTEX_SE3:QUAT"),
    ("read_g2o", "not_pd.g2o", V2 + "EDGE_SE2 0 1 1 0 0 1 0 0 -1 0 1\n", 3,
     "information matrix is not positive definite"),
    ("read_g2o", "not_pd_3d.g2o", V3 + "EDGE_SE3:QUAT 0 1 1 0 0 0 0 0 1 " + INFO3.replace("1", "0", 1) + "\n",
     3, "information matrix is not positive definite"),
    ("read_g2o", "unknown_vertex.g2o", V2 + "\nEDGE_SE2 0 7 1 0 0 1 0 0 1 0 1\n", 4,
     "refers to vertex 7, which no VERTEX_SE2 record defines"),
    ("read_g2o", "repeated.g2o", "VERTEX_SE2 0 0 0 0\nVERTEX_SE2 0 1 0 0\n" + E2, 2,
     "id 0 repeats the vertex of line 1"),
    ("read_g2o", "self_loop.g2o", V2 + "EDGE_SE2 1 1 1 0 0 1 0 0 1 0 1\n", 3, "from vertex 1 to itself"),
    ("read_g2o", "mixed.g2o", V2 + E2 + V3, 4, "mixes 2-D"),
    ("read_g2o", "zero_quaternion.g2o", "VERTEX_SE3:QUAT 0 0 0 0 0 0 0 0\n", 1, "has norm 0"),
    ("read_g2o", "no_edges.g2o", V2, 2, "no EDGE_SE2 records"),
    ("read_g2o", "fix.g2o", V2 + E2 + "FIX 9\n", 4, "FIX names vertex 9"),
    ("read_g2o", "empty.g2o", "", 1, "empty file"),
    ("read_g2o", "blank.g2o", "\n   \n# only a comment\n", 3, "empty file"),
    ("read_toro", "toro_order.graph", T2 + "EDGE2 0 1 1 0 0 1 0 1 0 0 0\n", 3,
     "information matrix is not positive definite"),
    ("read_toro", "toro_tag.graph", V2 + E2, 1, "TORO files hold VERTEX2, EDGE2, VERTEX3, EDGE3; EQUIV"),
    ("read_toro", "toro_3d_fields.graph", "VERTEX3 0 0 0 0 0 0\n", 1, "VERTEX3 needs 7 fields"),
    ("read_bal", "header.txt", "3 7\n", 1, "BAL header must be three positive integers"),
    ("read_bal", "bal_fields.txt", "1 1 2\n0 0 1 2\n0 0 1\n", 3, "observation needs 4 fields"),
    ("read_bal", "bal_index.txt", "1 1 2\n0 0 1 2\n0 3 1 2\n", 3, "observation of point 3"),
    ("read_bal", "bal_short.txt", "1 1 1\n0 0 1 2\n1 2 3 4 5 6 7 8 9\n1 2\n", 4,
     "announces 12 camera and point parameters"),
    ("read_bal", "bal_long.txt", "1 1 1\n0 0 1 2\n1 2 3 4 5 6 7 8 9\n1 2 3\n4\n", 5, "more numbers than"),
    ("read_bal", "bal_number.txt", "1 1 1\n0 0 1 2\n1 2 3 4 5 x 7 8 9\n1 2 3\n", 3, "'x' is not a finite"),
    ("read", "unknown_format.txt", "\nhello world\n", 2, "unknown format"),
    ("read", "binary.g2o", b"VERTEX_SE2 0 0 0 0\n\xff\xfe\n", 2, "not a text file"),
]

READERS = {"read": read, "read_g2o": read_g2o, "read_toro": read_toro, "read_bal": read_bal}


@pytest.mark.parametrize("reader, name, content, line, fragment", CASES, ids=[c[1] for c in CASES])
def test_malformed_file_names_file_and_line(tmp_path, reader, name, content, line, fragment):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(FormatError) as caught:
        READERS[reader](path)
    error = caught.value
    assert isinstance(error, ValueError)
    assert str(error).startswith(f"{path}:{line}: "), str(error)
    assert fragment in str(error)
    assert (error.path, error.line) == (str(path), line)
    if reader in ("read_g2o", "read_bal") and name not in ("empty.g2o", "blank.g2o", "header.txt"):
        with pytest.raises(FormatError) as detected:  # read() detects the format: same message
            read(path)
        assert str(detected.value) == str(error)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.g2o"
    for reader in READERS.values():
        with pytest.raises(MissingFileError, match="nowhere.g2o: no such file"):
            reader(path)
    with pytest.raises(FileNotFoundError):
        read(path)
    with pytest.raises(FormatError, match="not a regular file"):
        read(tmp_path)
