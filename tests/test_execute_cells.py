"""tools.execute_cells stores a cell's prints as Jupyter shows them: one box per run of the same stream."""

import nbformat

from tools.execute_cells import merged_streams


def test_consecutive_prints_to_one_stream_are_stored_as_one_output():
    stream = nbformat.v4.new_output
    outputs = [stream("stream", name="stdout", text="a\n"), stream("stream", name="stdout", text="b\n"),
               stream("stream", name="stderr", text="warning\n"), stream("stream", name="stdout", text="c\n")]
    merged = merged_streams(outputs)
    assert [(o["name"], o["text"]) for o in merged] == [("stdout", "a\nb\n"), ("stderr", "warning\n"),
                                                        ("stdout", "c\n")]
    assert outputs[0]["text"] == "a\n"  # the executed outputs are left as they were
