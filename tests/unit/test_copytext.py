"""pgoutput tuples to COPY lines in C (connectors/postgres/_copytext.c): built, and equal to the Python reference."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from connectors.postgres import copytext
from connectors.postgres.copytext import tuple_line, tuple_line_python
from connectors.postgres.logical import UNCHANGED, PgOutputError

from .test_pgoutput_decode import tuple_data


def test_the_c_extension_was_built():
    assert copytext._compiled is not None, ("connectors/postgres/_copytext.c was not compiled: install a C "
                                            "compiler and Python's headers (ops/bootstrap.sh does) and reinstall")


VALUES = st.one_of(st.none(), st.just(UNCHANGED), st.binary(max_size=6),  # bytes: a binary-format value
                   st.text(alphabet=st.sampled_from("a\\\t\n\r\bN.中"), max_size=12))


@given(values=st.lists(VALUES, max_size=8), cut=st.integers(0, 80), garbage=st.binary(max_size=3))
def test_compiled_and_python_agree_on_any_tuple_whole_cut_or_garbled(values, cut, garbage):
    """Same line and values, or both refuse; on whole tuples, on every cut and with bytes appended or replaced."""
    def outcome(function, data):
        try:
            return function(data, 0)
        except PgOutputError:
            return "refused"

    assert copytext._compiled is not None
    whole = tuple_data(*values)
    for data in (whole, whole[:cut], whole + garbage, garbage + whole[len(garbage):]):
        assert outcome(tuple_line, data) == outcome(tuple_line_python, data)
