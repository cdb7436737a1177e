"""The shared test setup itself."""
from hypothesis import given
from hypothesis import strategies as st


def test_property_tests_draw_the_same_examples_on_every_run():
    def draws() -> list[str]:
        seen = []

        @given(st.text())
        def prop(s):
            seen.append(s)

        prop()
        return seen

    first = draws()
    assert len(first) > 10 and first == draws()
